#!/usr/bin/env bash
# The one prepared GPU call (issues 5 and 13): correctness on the card, then the speed tables.
# Run on the device machine from the repository root:  bash benchmarks/gpu_run.sh
# Writes under $OUT (or ./gpu-out when OUT is unset), at most 8 files. Budget: about 8 minutes
# on an H100/H200 (each step has its own timeout, so one that hangs does not lose the others).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
# 1. Correctness first, with the fixed first config (no minutes spent tuning inside the tests),
#    except the re-tuning test, which tunes one bucket on purpose (~40 s)  [~2.5 min]
SELFATTENTION_TRITON_CONFIG=first timeout 180 python3 -m pytest tests/kernels -q -p no:cacheprovider -rA \
  2>&1 | tee "$out/tests.log" | grep -E "passed|failed|error|FAIL|re-tuning|first .* ms" | tail -n 40
# (The compiler report, benchmarks/kernel_report.py, needs no GPU: it was made with Triton 3.6.)
# 2. The dense table, autotuned: ours vs SDPA cuDNN and flash  [~2.5 min]
timeout 150 python3 benchmarks/gpu_attention.py --json "$out/results.jsonl" 2>&1 | tee "$out/dense.md"
# 3. The masked table (block maps, lengths, GQA) vs cuDNN, flash, FlexAttention, then re-tuning  [~2.5 min]
timeout 150 python3 benchmarks/gpu_masked.py --json "$out/results.jsonl" 2>&1 | tee "$out/masked.md"
