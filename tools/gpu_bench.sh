#!/usr/bin/env bash
# The prepared H200 benchmark (NOT yet run on a GPU): GPT-2 124M tokens/s and MFU for batch
# 32/16/8 x remat none/dots x cuDNN attention on/off, then nanoGPT's GPU char recipe to val 1.47.
# Each step runs in its own subprocess under its own time cap; OUT/gpu_bench.json is rewritten after
# every step. See tools/gpu_bench.py for what is measured and how.
#
#   tools/gpu_bench.sh [--tiny] [--out=DIR] [--data=PATH/tinyshakespeare.txt] [--budget_s=540]
#
# --out defaults to $OUT (the device tool's output folder) when set. --tiny: toy sizes, a CPU smoke
# run (tests/test_gpu_bench.py). PYTHON picks the interpreter (default: .venv/bin/python, else
# python3). The script keeps to --budget_s (540 s) itself, and is killed at GPU_BENCH_HARD_S (570 s)
# whatever happens (it then records "stopped" and keeps what is done).
#
# On the device machine (no network; Python 3.12 with jax 0.11.2 + the CUDA 13 plugin, flax,
# optax, orbax-checkpoint): jaxlm imports from the checkout (this script puts the repo root first
# on PYTHONPATH); the five wheels the image lacks and the Shakespeare text travel with `carry`.
#   1. here, once, in the checkout the session was started in: tools/gpu_wheels.sh
#   2. one device call: run(carry=[".whl", ".gpu_data"], timeout_s=600, command=
#      'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHON=python3 tools/gpu_bench.sh --out=$OUT')
#      Then read $OUT/gpu_bench.json (and char_metrics.jsonl) under the reply's files_at. Machine
#      start (minutes) + 570 s at most leaves no second try in 15 minutes of device time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# One compilation cache for all the steps' processes: with it JAX also keeps XLA's per-fusion GPU
# autotuning results (jax_persistent_cache_enable_xla_caches, on by default), so rows after the
# first skip re-autotuning the same matmuls.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/gpu_bench_jax_cache}"
exec timeout --signal=TERM --kill-after=15 "${GPU_BENCH_HARD_S:-570}" \
  "$PYTHON" tools/gpu_bench.py "$@"
