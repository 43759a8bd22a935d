"""Lightning indexer + top-k (kernels/indexer.py) at V4-Flash shapes: 64 indexer heads x 128, top-512,
CSA rate 4. Decode (S = 1) at T = 256K compressed keys (1M tokens) is memory-bound on the keys;
a prefill chunk (S = 2048, T = 64K) is compute-bound.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from benchmarks.kernel_cases import Case
from v4.kernels.indexer import (indexer_scores_reference, indexer_topk, indexer_topk_fp8, indexer_topk_fp8_reference,
                             indexer_topk_reference, quantize_index_keys_fp8, dequantize_index_keys_fp8)
from v4.kernels.indexer_fp8 import indexer_scores_fp8q_reference, indexer_topk_fp8q, indexer_topk_fp8q_reference

HEADS, HEAD_DIM, TOPK, RATE = 64, 128, 512, 4  # model/config.py: index_n_heads, index_head_dim, index_topk, CSA
L2_BYTES = 50 << 20  # H100: inputs smaller than twice this are rotated between several copies


def _inputs(device: str, batch: int, seq_len: int, num_keys: int, fp8: bool, seed: int) -> tuple:
    """(q, weights, keys[, key_scale]) with the last query seeing every key (start = RATE*T - S)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(batch, seq_len, HEADS, HEAD_DIM, generator=gen, device=device).bfloat16()
    weights = torch.randn(batch, seq_len, HEADS, generator=gen, device=device) * HEADS**-0.5
    keys = torch.randn(batch, num_keys, HEAD_DIM, generator=gen, device=device).bfloat16()
    return (q, weights, *quantize_index_keys_fp8(keys)) if fp8 else (q, weights, keys)


def _selected_values(scores: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Reference scores of the selected keys, largest first (-inf for -1 padding)."""
    values = scores.gather(-1, idx.clamp(min=0).long()).masked_fill(idx < 0, float("-inf"))
    return values.sort(dim=-1, descending=True).values


def selection_error(scores: torch.Tensor, got: torch.Tensor, want: torch.Tensor) -> float:
    """||v(got) - v(want)|| / ||v(want)|| over the reference scores v of each selection: 0 when the sets
    agree, tiny when they differ only between near-equal scores; inf if the counts differ."""
    a, b = _selected_values(scores, got), _selected_values(scores, want)
    finite = torch.isfinite(b)
    if not torch.equal(finite, torch.isfinite(a)):
        return float("inf")
    return float((a[finite] - b[finite]).norm() / b[finite].norm().clamp(min=1e-30))


def _case(device: str, batch: int, seq_len: int, num_keys: int, fp8: bool, fp8_queries: bool = False) -> Case:
    """fp8: FP8 keys; fp8_queries: the queries rounded to FP8 too (kernels/indexer_fp8.py, prefill)."""
    start = RATE * num_keys - seq_len
    kernel_fn: Callable = indexer_topk_fp8q if fp8_queries else indexer_topk_fp8 if fp8 else indexer_topk
    ref_fn: Callable = (indexer_topk_fp8q_reference if fp8_queries else indexer_topk_fp8_reference if fp8
                        else indexer_topk_reference)
    first = _inputs(device, batch, seq_len, num_keys, fp8, seed=0)
    set_bytes = sum(x.numel() * x.element_size() for x in first)
    sets = [first] + [_inputs(device, batch, seq_len, num_keys, fp8, seed=i) for i in range(1, 3)
                      if set_bytes * i < 2 * L2_BYTES]
    rotation = itertools.cycle(sets)
    compiled_ref = torch.compile(ref_fn, dynamic=False)
    args = (start, RATE, HEAD_DIM**-0.5, TOPK)

    def check() -> float:
        fresh = _inputs(device, batch, seq_len, num_keys, fp8, seed=1234)
        if fp8_queries:
            scores = indexer_scores_fp8q_reference(*fresh, *args[:3])
        else:
            keys = dequantize_index_keys_fp8(*fresh[2:]) if fp8 else fresh[2]
            scores = indexer_scores_reference(fresh[0], fresh[1], keys, *args[:3])
        return selection_error(scores, kernel_fn(*fresh, *args), ref_fn(*fresh, *args))

    # Fewest bytes: q, weights, keys (+ scales) read once, the int32 indices written once. The kernel
    # also writes and re-reads the float32 scores (8 bytes per (s, t); ~3% more at bf16 decode): extra.
    out_bytes = batch * seq_len * TOPK * 4
    visible = sum(min(num_keys, (start + s + 1) // RATE) for s in range(seq_len))
    flops = 2 * HEADS * HEAD_DIM * batch * visible  # q . k for every visible (query, key) pair, per head
    kind = "decode" if seq_len == 1 else "prefill"
    return Case(
        kernel_name="indexer_topk_fp8q" if fp8_queries else "indexer_topk_fp8" if fp8 else "indexer_topk",
        shape=f"{kind} B={batch} S={seq_len} T={num_keys} Hi={HEADS} Di={HEAD_DIM} k={TOPK}"
              + (" FP8 q and k" if fp8_queries else ""),  # "fp8" in a shape: share of the FP8 matmul rate
        bytes_moved=set_bytes + out_bytes,
        flops=flops,
        bound="memory" if kind == "decode" else "compute",
        kernel=lambda: kernel_fn(*next(rotation), *args),
        eager=lambda: ref_fn(*next(rotation), *args),
        compiled=lambda: compiled_ref(*next(rotation), *args),
        check=check,
        goal=">= 70% of copy bandwidth" if kind == "decode" else "report FLOP/s (2*Hi*Di per visible pair)",
        extra={"score_round_trip_bytes": 8 * batch * seq_len * num_keys, "input_sets": len(sets)},
    )


def cases(device: str, tiny: bool = False) -> list[Case]:
    """Decode B = 1 and 8 at T = 256K (bf16 and FP8 keys); prefill S = 2048 at T = 64K (bf16 keys, FP8
    keys, FP8 keys and queries). `tiny` shrinks every shape for a CPU smoke run under TRITON_INTERPRET=1."""
    decode_keys, prefill = (200, (24, 300)) if tiny else (256 * 1024, (2048, 64 * 1024))
    out = [_case(device, batch, 1, decode_keys, fp8) for fp8 in (False, True) for batch in (1, 8)]
    out += [_case(device, 1, *prefill, fp8) for fp8 in (False, True)]
    out.append(_case(device, 1, *prefill, True, fp8_queries=True))
    return out
