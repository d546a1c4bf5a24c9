#!/usr/bin/env bash
# Runs the loaders' cargo-fuzz targets (tests/fuzz/, libFuzzer) for a while each: a developer
# command, not run in CI (it needs nightly and cargo-fuzz; `cargo test` replays the corpus and
# the regressions on stable, tests/tests/fuzz_loaders.rs).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default: 60 s each, every target
#
# Targets: config_json safetensors index_json tokenizer_json gguf (tests/src/fuzz_targets.rs).
# New inputs that reach new code are added to tests/fuzz/corpus/TARGET/; a crash, a timeout
# (20 s) or a process over 2 GB resident is written to tests/fuzz/regressions/TARGET/ and stops
# that target. Fix the class, keep the input there (the replay test runs it), then minimise the
# corpus before committing it: `cargo +nightly fuzz cmin --fuzz-dir tests/fuzz TARGET`.
#
# Needs: rustup's nightly toolchain and `cargo install cargo-fuzz`. Built without a sanitizer
# (`-s none`, for speed: the targets are safe Rust over Candle) and with debug assertions (`-a`,
# so that an integer overflow is a crash rather than a wrapped size).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(config_json safetensors index_json tokenizer_json gguf)
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}/fuzz
for t in "${targets[@]}"; do
    mkdir -p "tests/fuzz/corpus/$t" "tests/fuzz/regressions/$t"
    echo "== $t for ${secs}s"
    cargo +nightly fuzz run --fuzz-dir tests/fuzz -s none -a "$t" "tests/fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="tests/fuzz/regressions/$t/" -print_final_stats=1
done
