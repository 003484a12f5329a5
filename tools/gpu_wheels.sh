#!/usr/bin/env bash
# Fetches what tools/gpu_bench.sh needs on the H200 device machine and the machine lacks: jaxlm's
# imports on the bench's path that its image does not hold (the device tool's KINDS.md lists the
# image's packages), as Python 3.12 manylinux x86-64 wheels into .whl/, one version each (ours,
# constraints.txt), with --no-deps: every one of their own needs (absl-py, cloudpickle, etils,
# numpy, protobuf, psutil, PyYAML, packaging) is already there. Also copies tinyshakespeare.txt
# into .gpu_data/ for the char run. Both folders are git-ignored and travel with `carry`; together
# about 5.6 MB of the 64 MiB a call may send. Run it here (it needs the package registry), then the
# one device call that tools/gpu_bench.sh's header gives.
#
#   tools/gpu_wheels.sh [PATH/tinyshakespeare.txt]
#
# grain (+ array-record, portpicker): jaxlm.data.pipeline's training batches (the char run);
# ml-collections: jaxlm's configs; tensorboardX: the train metrics writer's TensorBoard mirror.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
mkdir -p .whl .gpu_data
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0 \
  tensorboardX==2.6.5
DATA="${1:-../shared/data/tinyshakespeare.txt}"
if [ -f "$DATA" ]; then install -m 644 "$DATA" .gpu_data/tinyshakespeare.txt; else
  echo "warning: $DATA not found; the char run will be skipped unless .gpu_data/ holds it" >&2; fi
ls -l .whl .gpu_data
du -sch .whl .gpu_data
