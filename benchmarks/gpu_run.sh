#!/usr/bin/env bash
# The one prepared GPU call (issue 5): correctness on the card, then the speed table.
# Run on the device machine from the repository root:  bash benchmarks/gpu_run.sh
# Writes its logs under $OUT (or ./gpu-out when OUT is unset). Budget: well under 10 minutes.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
# Correctness first (fixed first config: no minutes spent tuning inside the tests).
SELFATTENTION_TRITON_CONFIG=first timeout 200 python3 -m pytest tests/kernels -q -x -p no:cacheprovider \
  2>&1 | tee "$out/tests.log" | tail -n 15
# Then the table (autotuned), same inputs for every implementation.
timeout 330 python3 benchmarks/gpu_attention.py --json "$out/bench.jsonl" 2>&1 | tee "$out/bench.md"
