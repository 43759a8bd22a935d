#!/usr/bin/env bash
# Decode work on the device in two calls (each under the 10-minute limit), results to $OUT (or ./out):
#   bash benchmarks/device_decode.sh checks  # ~7 min: CUDA parity tests of every decode path, the state
#                                            #   handoff around an answer (bench_state_handoff.py, on
#                                            #   benchmarks/.work/base too when carried), the decode
#                                            #   kernels against their bytes (experts at 1, 2, 8 tokens,
#                                            #   projections at 2 rows)
#   bash benchmarks/device_decode.sh layout  # ~5 min: the same without the kernel benchmarks
#   bash benchmarks/device_decode.sh final   # ~6 min: the parity tests of the paths the decode state
#                                            #   touches (offload's graphed ones too), the handoff, then the
#                                            #   MTP verify step
#   bash benchmarks/device_decode.sh perf    # ~8 min: launches per layer, the MTP verify step, and
#                                            #   bench_perf's graphed step on the tree before (benchmarks/.work/base,
#                                            #   made by `git archive BASE | tar -x -C benchmarks/.work/base` and
#                                            #   carried) and on this tree, side by side on one machine
#   bash benchmarks/device_decode.sh prefill # ~8 min: the CUDA tests of the attention paths, prefill attention
#                                            #   before/now (bench_prefill_attention.py), then the prefill sweep
#                                            #   8K..1M (FP8 state) on this tree and on benchmarks/.work/base
#   bash benchmarks/device_decode.sh verify  # ~5 min: the MTP verify step against a 1-token step, then
#                                            #   the prefill sweep 8K..1M (FP8 state) with growth per doubling
#   bash benchmarks/device_decode.sh margins # ~9 min: the CUDA tests of the step's index kernels, the decode
#                                            #   indexer and the static paths, launches per layer, then the perf
#                                            #   margins on this tree and on benchmarks/.work/base (as `perf`,
#                                            #   without the verify step): one call when device time is short
#   bash benchmarks/device_decode.sh fp4     # ~5 min: the CUDA tests of the expert kernels and the static
#                                            #   decode, then the FP4 expert GEMV at 1, 2, 8 tokens on this
#                                            #   tree (with the launch sweep) and on benchmarks/.work/base
#   bash benchmarks/device_decode.sh pair    # ~6 min: `margins` without its tests
#   bash benchmarks/device_decode.sh profile # ~2 min: `fused` without its tests
#   bash benchmarks/device_decode.sh sweep   # ~4 min: `verify` without the MTP verify step
#   bash benchmarks/device_decode.sh fused   # ~6 min: the CUDA tests of the step's index kernels and the
#                                            #   decode indexer with every decode path's parity tests, the
#                                            #   launches per layer, then a profile of the graphed B=1 step
# The last lines printed are a summary.
set -u
OUT=${OUT:-$PWD/out}
BASE=benchmarks/.work/base
mkdir -p "$OUT"
part=${1:-checks}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"

KERNEL_TESTS="tests/kernels/test_kv_write.py tests/kernels/test_compress_step.py tests/kernels/test_swiglu.py
  tests/kernels/test_decode_moe.py tests/kernels/test_decode_gemv.py tests/model/test_sampling.py
  tests/model/test_native_quant.py tests/model/test_fused_inputs.py"
STATE_TESTS="tests/model/test_static_decode.py tests/model/test_static_verify.py tests/model/test_mtp.py
  tests/model/test_speculative_sampling.py tests/model/test_fp8_state.py tests/model/test_runner.py
  tests/model/test_engine.py tests/model/test_state_layout.py"
if [ "$part" = checks ] || [ "$part" = layout ] || [ "$part" = final ]; then
  # final: the paths the state touches (and offload's graphed ones), not the kernels' own tests
  tests="$STATE_TESTS $([ "$part" = final ] && echo tests/model/test_offload.py tests/kernels/test_sparse_attention.py || echo "$KERNEL_TESTS")"
  timeout 270 python -m pytest -q -p no:cacheprovider $tests > "$OUT/checks.txt" 2>&1
  echo "checks exit $?: $(tail -1 "$OUT/checks.txt")"; grep -E "^FAILED|^ERROR" "$OUT/checks.txt" | head -10
  timeout 100 python benchmarks/bench_state_handoff.py --out "$OUT/handoff_new.json" > "$OUT/handoff_new.log" 2>&1
  echo "handoff new exit $?"; cat "$OUT/handoff_new.log" | tail -3
  if [ -d "$BASE" ]; then
    cp benchmarks/bench_state_handoff.py "$BASE/benchmarks/"
    (cd "$BASE" && timeout 100 python benchmarks/bench_state_handoff.py --out "$OUT/handoff_base.json" \
      > "$OUT/handoff_base.log" 2>&1)
    echo "handoff base exit $?"; tail -3 "$OUT/handoff_base.log"
  fi
fi

if [ "$part" = final ]; then
  timeout 170 python benchmarks/bench_mtp_verify.py --out "$OUT/mtp_verify" > "$OUT/mtp_verify.log" 2>&1
  echo "mtp exit $?"; grep "^|" "$OUT/mtp_verify/mtp_verify.md"
fi

if [ "$part" = checks ] || [ "$part" = layout ]; then
  timeout 150 python -m pytest -q -p no:cacheprovider tests/kernels/test_moe.py tests/model/test_offload.py \
    tests/model/test_offload_policy.py tests/model/test_offload_prefetch.py tests/model/test_cpu_experts.py \
    > "$OUT/checks_offload.txt" 2>&1
  echo "offload checks exit $?: $(tail -1 "$OUT/checks_offload.txt")"; grep -E "^FAILED|^ERROR" "$OUT/checks_offload.txt" | head -10
fi

if [ "$part" = checks ]; then
  timeout 180 python benchmarks/bench_decode_gemv.py --sections experts --rows 1,2,8 --quick --out "$OUT/experts" \
    > "$OUT/experts.log" 2>&1
  echo "experts exit $?"; grep "^|" "$OUT/experts.md"
  timeout 80 python benchmarks/bench_decode_gemv.py --sections projections --rows 2 --quick --out "$OUT/projections2" \
    > "$OUT/projections2.log" 2>&1
  echo "projections exit $?"; grep "^|" "$OUT/projections2.md" | cut -c1-150
fi

if [ "$part" = margins ]; then
  timeout 200 python -m pytest -q -p no:cacheprovider tests/kernels/test_step_indices.py tests/kernels/test_indexer.py \
    tests/model/test_decode_positions.py tests/model/test_static_decode.py tests/model/test_fp8_state.py \
    tests/model/test_static_verify.py > "$OUT/checks.txt" 2>&1
  echo "checks exit $?: $(tail -1 "$OUT/checks.txt")"; grep -E "^FAILED|^ERROR" "$OUT/checks.txt" | head -10
fi

if [ "$part" = fp4 ]; then
  timeout 200 python -m pytest -q -p no:cacheprovider tests/kernels/test_decode_moe.py tests/kernels/test_fp8_gemm.py \
    tests/model/test_native_quant.py tests/model/test_static_decode.py tests/model/test_offload.py > "$OUT/checks.txt" 2>&1
  echo "checks exit $?: $(tail -1 "$OUT/checks.txt")"; grep -E "^FAILED|^ERROR" "$OUT/checks.txt" | head -10
  timeout 200 python benchmarks/bench_decode_gemv.py --sections experts --kinds fp4 --rows 1,2,8 \
    --out "$OUT/experts_new" > "$OUT/experts_new.log" 2>&1
  echo "experts new exit $?"; grep "^|" "$OUT/experts_new.md"
  if [ -d "$BASE" ]; then
    cp benchmarks/bench_decode_gemv.py "$BASE/benchmarks/"
    (cd "$BASE" && timeout 100 python benchmarks/bench_decode_gemv.py --sections experts --kinds fp4 --rows 1,2,8 \
      --quick --out "$OUT/experts_base" > "$OUT/experts_base.log" 2>&1)
    echo "experts base exit $?"; grep "^|" "$OUT/experts_base.md"
  fi
fi

if [ "$part" = perf ] || [ "$part" = margins ] || [ "$part" = pair ]; then
  python benchmarks/count_decode_ops.py --device cuda --kv-format fp8 > "$OUT/ops.json" 2> /tmp/ops.err
  echo "ops exit $?: $(cat "$OUT/ops.json")"
  if [ "$part" = perf ]; then
    timeout 150 python benchmarks/bench_mtp_verify.py --out "$OUT/mtp_verify" > "$OUT/mtp_verify.log" 2>&1
    echo "mtp exit $?"; tail -7 "$OUT/mtp_verify.log"
  fi
  timeout 200 python benchmarks/bench_perf.py --skip-checks --prefill 8192 --budget-s 5 \
    --out "$OUT/perf_new.json" > "$OUT/perf_new.log" 2>&1
  echo "perf new exit $?"
  if [ -d "$BASE" ]; then
    cp benchmarks/bench_perf.py "$BASE/benchmarks/"  # the same measurement (margins per layer) on the old code
    (cd "$BASE" && timeout 170 python benchmarks/bench_perf.py --skip-checks --prefill 8192 --budget-s 5 \
      --out "$OUT/perf_base.json" > "$OUT/perf_base.log" 2>&1)
    echo "perf base exit $?"
  fi
  python benchmarks/summarize_decode.py "$OUT/perf_base.json" "$OUT/perf_new.json"
fi

if [ "$part" = prefill ]; then
  timeout 120 python -m pytest -q -p no:cacheprovider tests/kernels/test_sparse_attention.py tests/model/test_fp8_state.py \
    tests/kernels/test_indexer.py > "$OUT/checks_prefill.txt" 2>&1
  echo "prefill checks exit $?: $(tail -1 "$OUT/checks_prefill.txt")"; grep -E "^FAILED|^ERROR" "$OUT/checks_prefill.txt" | head
  timeout 150 python benchmarks/bench_prefill_attention.py --quick --out "$OUT/prefill_attention" \
    > "$OUT/prefill_attention.log" 2>&1
  echo "prefill attention exit $?"; grep "^|" "$OUT/prefill_attention.md"
  sweep="--prefill-only --skip-checks --kv-format fp8 --prefill 131072,524288,1048576 --budget-s 120"
  timeout 170 python benchmarks/bench_perf.py $sweep --out "$OUT/prefill_new.json" > "$OUT/prefill_new.log" 2>&1
  echo "prefill new exit $?"
  if [ -d "$BASE" ]; then
    (cd "$BASE" && timeout 150 python benchmarks/bench_perf.py $sweep --out "$OUT/prefill_base.json" > "$OUT/prefill_base.log" 2>&1)
    echo "prefill base exit $?"
  fi
  for tree in new base; do
    [ -f "$OUT/prefill_$tree.json" ] && python -c "import json, sys; p = json.load(open(sys.argv[1])).get('flash_prefill'); \
print(sys.argv[2], json.dumps(p))" "$OUT/prefill_$tree.json" $tree
  done
fi

if [ "$part" = fused ] || [ "$part" = profile ]; then
  if [ "$part" = fused ]; then
    timeout 300 python -m pytest -q -p no:cacheprovider tests/kernels/test_step_indices.py tests/kernels/test_indexer.py \
      tests/kernels/test_indexer_fp8.py tests/model/test_decode_positions.py $STATE_TESTS > "$OUT/checks.txt" 2>&1
    echo "checks exit $?: $(tail -1 "$OUT/checks.txt")"; grep -E "^FAILED|^ERROR" "$OUT/checks.txt" | head -10
  fi
  python benchmarks/count_decode_ops.py --device cuda --kv-format fp8 > "$OUT/ops.json" 2> "$OUT/ops.err"
  echo "ops exit $?: $(cat "$OUT/ops.json")"
  timeout 150 python benchmarks/profile_perf.py --out "$OUT/profile.json" --kv-format fp8 --prefill 65536 --top 80 \
    --batches 1 > "$OUT/profile.log" 2>&1
  echo "profile exit $?"; python -c "import json, sys; d = json.load(open(sys.argv[1]))['decode_b1']; \
print(d['graph_ms'], d['graph']['launches_per_run'], d['graph']['kernel_us_per_run']); \
[print(r['launches'], r['us'], r['kernel'][:90]) for r in d['graph']['top'][:40]]" "$OUT/profile.json"
fi

if [ "$part" = verify ] || [ "$part" = sweep ]; then
  if [ "$part" = verify ]; then
    timeout 170 python benchmarks/bench_mtp_verify.py --out "$OUT/mtp_verify" > "$OUT/mtp_verify.log" 2>&1
    echo "mtp exit $?"; grep "^|" "$OUT/mtp_verify/mtp_verify.md"
  fi
  timeout 260 python benchmarks/bench_perf.py --prefill-only --skip-checks --kv-format fp8 --budget-s 200 \
    --out "$OUT/prefill_fp8.json" > "$OUT/prefill.log" 2>&1
  echo "prefill exit $?"
  python -c "import json, sys; p = json.load(open(sys.argv[1]))['flash_prefill']; print(json.dumps(p, indent=1))" \
    "$OUT/prefill_fp8.json" | head -40
fi
