#!/usr/bin/env bash
# Decode work in one device call (or two: `checks` then `perf`): the CUDA parity tests of every new path
# first, then kernel launches per layer, the decode GEMVs, the FP8 indexer, the MTP verify step, and the
# whole decode step side by side with the tree before this work (benchmarks/.work/base, made by
# `git archive BASE | tar -x -C benchmarks/.work/base` and carried along).
#
#   bash benchmarks/device_decode.sh checks   # ~6 min: tests on CUDA, launches, GEMV, indexer
#   bash benchmarks/device_decode.sh perf     # ~5 min: MTP verify, bench_perf on this tree
#   bash benchmarks/device_decode.sh base     # ~3 min: bench_perf on the tree before (same machine, same lease)
# Results go to $OUT (or ./out); the last lines printed are a summary.
set -u
OUT=${OUT:-$PWD/out}
BASE=benchmarks/.work/base
mkdir -p "$OUT"
part=${1:-checks}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

if [ "$part" = checks ]; then
  timeout 300 python -m pytest -q -p no:cacheprovider -x tests/kernels/test_decode_gemv.py tests/kernels/test_decode_moe.py \
    tests/kernels/test_indexer_fp8.py tests/kernels/test_indexer.py tests/model/test_static_decode.py \
    tests/model/test_mtp.py tests/model/test_native_quant.py tests/model/test_fp8_state.py tests/model/test_runner.py \
    tests/model/test_scheduler.py > "$OUT/checks.txt" 2>&1
  echo "checks exit $?: $(tail -1 "$OUT/checks.txt")"
  timeout 240 python benchmarks/bench_decode_gemv.py --out "$OUT/decode_gemv" > "$OUT/decode_gemv.log" 2>&1
  echo "gemv exit $?"; tail -25 "$OUT/decode_gemv.log"
  timeout 150 python benchmarks/bench_indexer_fp8.py --out "$OUT/indexer_fp8" > "$OUT/indexer_fp8.log" 2>&1
  echo "indexer exit $?"; tail -15 "$OUT/indexer_fp8.log"
fi

if [ "$part" = perf ]; then
  # launches per layer, this tree and the tree before (one file: $OUT/ops.txt)
  python benchmarks/count_decode_ops.py --device cuda > /tmp/ops_new.json 2> /tmp/ops_new.err
  echo "ops new exit $?"; tail -3 /tmp/ops_new.err
  if [ -d "$BASE" ]; then
    cp benchmarks/count_decode_ops.py "$BASE/benchmarks/"
    (cd "$BASE" && python benchmarks/count_decode_ops.py --device cuda > /tmp/ops_base.json 2> /tmp/ops_base.err)
    echo "ops base exit $?"; tail -3 /tmp/ops_base.err
  fi
  { echo "== new"; cat /tmp/ops_new.json; echo "== base"; cat /tmp/ops_base.json 2>/dev/null; } > "$OUT/ops.txt"
  if [ -f benchmarks/bench_mtp_verify.py ]; then
    timeout 200 python benchmarks/bench_mtp_verify.py --out "$OUT/mtp_verify" > "$OUT/mtp_verify.log" 2>&1
    echo "mtp exit $?"; tail -12 "$OUT/mtp_verify.log"
  fi
  timeout 260 python benchmarks/bench_perf.py --skip-checks --prefill 8192,131072,524288,1048576 --budget-s 150 \
    --out "$OUT/perf_new.json" > "$OUT/perf_new.log" 2>&1
  echo "perf new exit $?"; tail -20 "$OUT/perf_new.log"
fi

if [ "$part" = base ] && [ -d "$BASE" ]; then
  (cd "$BASE" && timeout 400 python benchmarks/bench_perf.py --skip-checks --prefill 8192,131072,524288,1048576 \
    --budget-s 150 --out "$OUT/perf_base.json" > "$OUT/perf_base.log" 2>&1)
  echo "perf base exit $?"; tail -20 "$OUT/perf_base.log"
fi
