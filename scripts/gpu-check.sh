#!/usr/bin/env bash
# The CUDA path's check on a real NVIDIA GPU, in two halves, for a GPU machine that has no Rust
# toolchain and no network (the project's lent H200):
#
#   scripts/gpu-check.sh build        # here: build for sm_90, strip, stage in .gpu-check/
#   scripts/gpu-check.sh run OUTDIR   # there, in the repository root: tests, benches, ab
#
# `build` compiles `emilio` and the `cuda_op` / `cuda_model` test executables with
# `--features cuda` (CUDA 13 from scripts/cuda-toolkit.sh unless CUDA_HOME is set; Candle's
# kernels take about 10 minutes on 2 cores, in their own target dir target/cuda so the CPU
# build is untouched), strips them and packs them into .gpu-check/bin.tar.xz (about 13 MB: the
# device tool carries at most 64 MiB) with a manifest of sizes, the commit and the toolchain.
#
# `run` prints the GPU, driver and library versions, then runs, each under its own time limit so
# one hang cannot spend the whole lease: both CUDA test suites; `emilio synth` of the 0.5B
# preset; `bench op --device cuda`; `bench model --device cuda` at bf16 and f16 (emilio against
# stock Candle on cuBLAS, same run); `ab --device cuda` on the tiny preset. Logs and `--json`
# go to OUTDIR (at most 8 files, the device tool's limit). It exits non-zero if any step failed,
# after running the others.
set -uo pipefail
cd "$(dirname "$0")/.."
stage=.gpu-check

build() {
  set -e
  if [[ -z "${CUDA_HOME:-}" ]]; then
    scripts/cuda-toolkit.sh >/dev/null
    eval "$(scripts/cuda-toolkit.sh --env)"
  fi
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  export CARGO_TARGET_DIR="$PWD/target/cuda"
  cargo build --release --locked -p emilio-cli --features cuda
  # The test executables' names carry a hash: take them from cargo's own report.
  mapfile -t tests < <(
    cargo test --release --locked -p emilio-tests --features cuda --test cuda_op --test cuda_model \
      --no-run --message-format=json 2>/dev/null |
      python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] in ("cuda_op", "cuda_model") and m.get("executable"):
        print(m["executable"])')
  [[ ${#tests[@]} == 2 ]] || { echo "gpu-check: expected 2 CUDA test executables, got ${#tests[@]}" >&2; exit 1; }
  rm -rf "$stage" && mkdir -p "$stage/bin"
  strip -o "$stage/bin/emilio" "$CARGO_TARGET_DIR/release/emilio"
  for t in "${tests[@]}"; do
    name="$(basename "$t")"
    strip -o "$stage/bin/${name%-*}" "$t"
  done
  {
    echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')"
    echo "built $(date -u +%FT%TZ) for sm_$CUDA_COMPUTE_CAP with $(nvcc --version | tail -n 1)"
    echo "needs glibc $(objdump -T "$stage"/bin/* | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -n 1)"
    (cd "$stage/bin" && ls -l --time-style=+ emilio cuda_op cuda_model | awk '{print $5, $NF}')
  } >"$stage/manifest.txt"
  tar -C "$stage" -cJf "$stage/bin.tar.xz" bin && rm -rf "$stage/bin"
  cat "$stage/manifest.txt"
  ls -l "$stage/bin.tar.xz"
}

# Runs one step under a time limit, its output to the console and to a log; records failures.
failed=()
step() {
  local name="$1" limit="$2" log="$3"
  shift 3
  echo "=== $name (limit ${limit}s) $(date -u +%T)"
  local start=$SECONDS
  local rc
  if [[ $log == *.json ]]; then
    # stdout is the JSON; stderr (progress, warnings) stays on the console.
    timeout --kill-after=5 "$limit" "$@" | tee "$log"
  else
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$log"
  fi
  rc=${PIPESTATUS[0]}
  echo "=== $name: rc $rc in $((SECONDS - start))s"
  [[ $rc == 0 ]] || failed+=("$name (rc $rc)")
}

run() {
  local out="$1"
  mkdir -p "$out"
  local bin=/tmp/gpu-check-bin
  rm -rf "$bin" && mkdir -p "$bin" && tar -C "$bin" --strip-components=1 -xJf "$stage/bin.tar.xz"
  # The CUDA 13 libraries the binaries link (cuBLAS, cuRAND, the runtime, NVRTC) are the
  # machine's toolkit's (on the lent H200: /usr/local/cuda/targets/x86_64-linux/lib), libcuda the
  # driver's (/usr/local/nvidia/lib64); ldconfig's cache first, then a search of the usual
  # places. A library not found is reported here, and the step that needs it fails to start.
  local dirs=()
  for lib in libcublas.so.13 libcurand.so.10 libcudart.so.13 libnvrtc.so.13 libcuda.so.1; do
    local found
    found="$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')"
    [[ -n "$found" ]] || found="$(find /usr/local/nvidia /usr/local/cuda* /opt /usr/lib -name "$lib" 2>/dev/null | head -n 1)"
    if [[ -n "$found" ]]; then dirs+=("$(dirname "$found")"); else echo "gpu-check: $lib not found" >&2; fi
  done
  LD_LIBRARY_PATH="$(printf '%s\n' "${dirs[@]}" | awk '!seen[$0]++' | paste -sd:)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH
  {
    cat "$stage/manifest.txt"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    nvidia-smi | head -n 4
    ldd --version | head -n 1
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    ldd "$bin/emilio" | grep -E 'cuda|cublas|curand|nvrtc|not found'
  } 2>&1 | tee "$out/env.txt"

  # Test executables run in their package's directory, as cargo runs them.
  pushd tests >/dev/null
  step "cuda_op tests" 100 "$out/tests.txt" "$bin/cuda_op" --test-threads 4
  step "cuda_model tests" 90 "$out/tests.txt" "$bin/cuda_model" --test-threads 4
  popd >/dev/null
  local q05=/tmp/gpu-check-q05 tiny=/tmp/gpu-check-tiny
  step "synth qwen2.5-0.5b" 45 "$out/log.txt" "$bin/emilio" synth --preset qwen2.5-0.5b --seed 1 --out "$q05" --force
  step "synth tiny" 15 "$out/log.txt" "$bin/emilio" synth --preset tiny --seed 1 --out "$tiny" --force
  step "bench op" 45 "$out/bench-op.json" "$bin/emilio" bench op --device cuda --json
  for dtype in bf16 f16; do
    step "bench model $dtype" 60 "$out/bench-model-$dtype.json" "$bin/emilio" bench model --device cuda \
      --dtype "$dtype" --model "$q05" --prompt-tokens 32 --decode-tokens 64 --reps 2 --json
  done
  step "ab tiny bf16" 25 "$out/ab.json" "$bin/emilio" ab --device cuda --dtype bf16 --model "$tiny" \
    --prompt "Why is the sky blue?" --no-chat --max-tokens 16 --no-stop --json
  if [[ ${#failed[@]} -gt 0 ]]; then
    printf 'gpu-check: failed: %s\n' "${failed[@]}" >&2
    return 1
  fi
  echo "gpu-check: every step passed"
}

case "${1:-}" in
  build) build ;;
  run) run "${2:?usage: scripts/gpu-check.sh run OUTDIR}" ;;
  *) echo "usage: scripts/gpu-check.sh build | run OUTDIR" >&2; exit 2 ;;
esac
