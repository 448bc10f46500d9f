#!/usr/bin/env bash
# The one prepared GPU call (issues 5 and 13): correctness on the card, then the speed tables.
# Run on the device machine from the repository root:  bash benchmarks/gpu_run.sh
# Writes under $OUT (or ./gpu-out when OUT is unset), at most 8 files. Budget: about 8 minutes
# on an H100/H200 (each step has its own timeout, so one that hangs does not lose the others;
# the timeouts add up to 590 s, inside a 600 s device call).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
# 1. Correctness first, with the fixed first config (no minutes spent tuning inside the tests),
#    except the re-tuning test, which tunes one bucket on purpose (~40 s)  [~3 min]
#    The GPU-only file first, so a timeout loses the interpreter-sized cases rather than these.
SELFATTENTION_TRITON_CONFIG=first timeout 190 python3 -m pytest -q -p no:cacheprovider -rA \
  tests/kernels/test_triton_gpu.py tests/kernels/test_block_sparse.py tests/kernels/test_triton_kernel.py \
  tests/kernels/test_tuning.py \
  2>&1 | tee "$out/tests.log" | grep -E "passed|failed|error|FAIL|re-tuning|first .* ms" | tail -n 40
# 1b. The integrations on the card, fixed first config: the custom operator (kernel forward and
#     backward, opcheck, a model compiled by Inductor around our kernels) and a tiny Llama through
#     transformers (tests/integrations/test_gpu.py)  [~1 min; not yet timed on a GPU]
SELFATTENTION_TRITON_CONFIG=first timeout 90 python3 -m pytest -q -p no:cacheprovider -rA \
  tests/integrations/test_gpu.py 2>&1 | tee "$out/integrations.log" | grep -E "passed|failed|error|FAIL" | tail -n 20
# (The compiler report, benchmarks/kernel_report.py, needs no GPU: it was made with Triton 3.6.)
# 2. The dense table, autotuned: ours vs SDPA cuDNN and flash  [~2 min]
timeout 130 python3 benchmarks/gpu_attention.py --json "$out/results.jsonl" 2>&1 | tee "$out/dense.md"
# 3. The masked table (block maps, lengths, GQA) vs cuDNN, flash, FlexAttention  [~2 min]
timeout 130 python3 benchmarks/gpu_masked.py --no-retune --json "$out/results.jsonl" 2>&1 | tee "$out/masked.md"
# 4. Re-tuning: first call at new lengths in a tuned bucket vs warm calls there  [~40 s]
timeout 50 python3 benchmarks/gpu_masked.py --retune-only --json "$out/results.jsonl" 2>&1 | tee "$out/retune.md"
