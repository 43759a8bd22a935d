#!/usr/bin/env bash
# Issue 28's device call (under the 10-minute limit), results to $OUT (or ./out): the offload budgets
# table (bench_offload_budgets.py), then the CUDA tests of the offload paths (the graphed step's CPU
# experts, NO_EXPERT in the grouped kernels). The last lines printed are a summary.
set -u
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
nproc | tee -a "$OUT/gpu.txt"
timeout ${BUDGETS_S:-400} python benchmarks/bench_offload_budgets.py --out "$OUT/offload_budgets.json" \
  > "$OUT/offload_budgets.log" 2>&1
echo "budgets exit $?"; grep -iE "error|Traceback" "$OUT/offload_budgets.log" | head -5
timeout ${CHECKS_S:-150} python -m pytest -q -p no:cacheprovider tests/model/test_cpu_experts.py tests/model/test_offload.py \
  tests/kernels/test_moe.py tests/kernels/test_decode_moe.py > "$OUT/checks_offload.txt" 2>&1
echo "offload checks exit $?: $(tail -1 "$OUT/checks_offload.txt")"; grep -E "^FAILED|^ERROR" "$OUT/checks_offload.txt" | head -10
python benchmarks/summarize_offload.py "$OUT/offload_budgets.json" 2>&1 | tail -40
