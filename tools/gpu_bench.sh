#!/usr/bin/env bash
# One prepared GPU benchmark (<= 8 minutes on an H200): GPT-2 124M tokens/s and MFU for a few
# batch/remat settings, then nanoGPT's GPU char recipe to validation loss 1.47. See tools/gpu_bench.py.
#
#   tools/gpu_bench.sh [--tiny] [--out=DIR] [--data=PATH/tinyshakespeare.txt]
#
# --tiny runs everything at toy sizes (a CPU smoke test, about a minute). Installs nothing, except
# from carried wheels: WHEELS=DIR installs jax[cuda] and jaxlm's dependencies from DIR with
# --no-index. PYTHON picks the interpreter (default: .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if [ -n "${WHEELS:-}" ]; then
  "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
fi
"$PYTHON" -c 'import jax; print("devices:", jax.devices())'
# Hard stop at 8 minutes, whatever happens; results so far are in OUT/gpu_bench.json only at the end,
# so the char run is bounded separately (--char_limit_s, default 240 s).
exec timeout --signal=TERM 480 "$PYTHON" tools/gpu_bench.py "$@"
