#!/usr/bin/env bash
# The GPU path's check, under 8 minutes on one GPU: the CUDA tests (`pytest -m cuda`: the engine's
# bounds against the CPU's and against sampling, a training step of every method, the scans,
# --compile, torchrun with nccl), then one timing of CNN7 on CIFAR-10-shaped inputs
# (benchmarks/gpu_step.py: IBP and CROWN-IBP steps against a natural step, and against
# auto_LiRPA when it can be imported).
#
#   benchmarks/gpu_check.sh                 # uses .venv/bin/python when present, else python3
#   PYTHON=/path/to/python benchmarks/gpu_check.sh
#   DEVICE=cpu benchmarks/gpu_check.sh      # the same on the CPU: checks the script itself
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEVICE=${DEVICE:-cuda}
export OMP_WAIT_POLICY=PASSIVE LANDSCAPE_TEST_DEVICE=$DEVICE
start=$(date +%s)
echo "== $(date -u +%FT%TZ) on $(hostname); python $($PY -c 'import sys; print(sys.version.split()[0])')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
if [ "$DEVICE" != cpu ] && ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "Error: no CUDA GPU visible to torch (DEVICE=cpu runs the check on the CPU)" >&2
    exit 2
fi

echo "== pytest -m cuda"
timeout 330 $PY -m pytest -q -p no:xdist -m cuda tests/test_cuda.py -rs
tests=$?

echo "== CNN7 step timing"
if [ "$DEVICE" = cpu ]; then
    timeout 120 $PY benchmarks/gpu_step.py --device cpu --batch 8 --repeats 2 --warmup 1
else
    timeout 120 $PY benchmarks/gpu_step.py --device "$DEVICE"
fi
timing=$?

echo "== done in $(( $(date +%s) - start )) s: tests exit $tests, timing exit $timing"
[ $tests -eq 0 ] && [ $timing -eq 0 ]
