"""The indexer's top-k selection kernel: each row's k largest scores, found from the per-chunk maxima the
score kernel writes (a threshold on the maxima, then the candidates above it), with ties broken towards
lower positions as `torch.topk` of the reference does. Split from `indexer.py`, which scores."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import interpreting

CHUNK = 16  # keys per maximum written by the score kernel
_NEG_INF_KEY = tl.constexpr(-2139095041)  # _mono_key(-inf)
_PAD_KEY = tl.constexpr(-2147483648)  # below every key: an empty slot


@triton.jit
def _mono_key(x):
    """float32 -> int32 ordered like the floats (-0.0 taken as +0.0, so ties match `==`)."""
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return tl.where(x == 0.0, 0, key)


@triton.jit
def _hist(keys, prefix, PASS: tl.constexpr):
    """Histogram of digit PASS (8 bits, most significant first) over the non-pad keys whose higher
    digits equal `prefix` (= key >> (32 - 8 * PASS))."""
    valid = keys != _PAD_KEY
    if PASS > 0:
        valid = valid & ((keys >> (32 - 8 * PASS)) == prefix)
    digit = (keys >> (24 - 8 * PASS)) & 0xFF
    if PASS == 0:
        digit = digit ^ 0x80  # the sign byte: flip so the digits order like signed keys
    left_out = tl.sum((valid == 0).to(tl.int32), axis=0)
    counts = tl.histogram(tl.where(valid, digit, 0), 256)
    return counts - tl.where(tl.arange(0, 256) == 0, left_out, 0)


@triton.jit
def _pick(hist, prefix, remaining, PASS: tl.constexpr):
    """Descend into the digit holding the `remaining`-th largest key: (new prefix, new remaining)."""
    bins = tl.arange(0, 256)
    at_or_above = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist
    digit = tl.max(tl.where(at_or_above >= remaining, bins, 0), axis=0)
    above = tl.sum(tl.where(bins == digit, at_or_above - hist, 0), axis=0)
    if PASS == 0:
        prefix = digit - 128
    else:
        prefix = prefix * 256 + digit
    return prefix, remaining - above


@triton.jit
def _maxima_keys(m_row, j, M, BLOCK: tl.constexpr):
    offs = j + tl.arange(0, BLOCK)
    x = tl.load(m_row + offs, mask=offs < M, other=0.0)
    return tl.where(offs < M, _mono_key(x), _PAD_KEY)


@triton.jit
def _chunk_threshold(keys0, m_row, M, k, BLOCK_M: tl.constexpr):
    """(A) tau: the 16-bit prefix of the k-th largest chunk max (all finite scores if M <= k)."""
    tau = tl.full([], _NEG_INF_KEY + 1, tl.int32)
    if M > k:
        prefix = 0
        remaining = k
        for p in tl.static_range(2):
            hist = _hist(keys0, prefix, p)
            for j in range(BLOCK_M, M, BLOCK_M):
                hist += _hist(_maxima_keys(m_row, j, M, BLOCK_M), prefix, p)
            prefix, remaining = _pick(hist, prefix, remaining, p)
        tau = tl.maximum(prefix * 65536, _NEG_INF_KEY + 1)
    return tau


@triton.jit
def _emit_chunks(keys, j, tau, cid_row, n_q, BLOCK: tl.constexpr):
    """(B) append the ids of chunks j.. whose max reaches tau."""
    qual = (keys >= tau).to(tl.int32)
    pos = n_q + tl.cumsum(qual, axis=0) - 1
    tl.store(cid_row + pos, j + tl.arange(0, BLOCK), mask=qual != 0)
    return n_q + tl.sum(qual, axis=0)


@triton.jit
def _candidates(s_row, cid_row, j, n_q, T, tau, BLOCK_C: tl.constexpr, CHUNK: tl.constexpr):
    """Keys (pad where below tau) and indices of the scores in listed chunks j..j+BLOCK_C, in order."""
    r = j + tl.arange(0, BLOCK_C)
    cid = tl.load(cid_row + r, mask=r < n_q, other=0)
    idx = cid[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
    ok = (r < n_q)[:, None] & (idx < T)
    key = _mono_key(tl.load(s_row + idx, mask=ok, other=0.0))
    key = tl.where(ok & (key >= tau), key, _PAD_KEY)
    return tl.reshape(key, [BLOCK_C * CHUNK]), tl.reshape(idx, [BLOCK_C * CHUNK])


@triton.jit
def _kth_key(keys0, s_row, cid_row, n_q, T, tau, k, BLOCK_C: tl.constexpr, CHUNK: tl.constexpr):
    """(C) the k-th largest candidate key and how many of its ties to take; with k or fewer
    candidates, a threshold below them all."""
    prefix = 0
    remaining = k
    num = 0
    for p in tl.static_range(4):
        hist = _hist(keys0, prefix, p)
        for j in range(BLOCK_C, n_q, BLOCK_C):
            keys, _ = _candidates(s_row, cid_row, j, n_q, T, tau, BLOCK_C, CHUNK)
            hist += _hist(keys, prefix, p)
        if p == 0:
            num = tl.sum(hist, axis=0)
        prefix, remaining = _pick(hist, prefix, remaining, p)
    take_all = num <= k
    return tl.where(take_all, _NEG_INF_KEY, prefix), tl.where(take_all, 0, remaining)


@triton.jit
def _emit(keys, idx, thr, room, out_row, n_sel, n_tie):
    """(D) store the indices above thr, and the first `room` ties overall, after n_sel earlier ones."""
    tie = (keys == thr).to(tl.int32)
    take = (keys > thr) | ((tie != 0) & (n_tie + tl.cumsum(tie, axis=0) <= room))
    taken = take.to(tl.int32)
    tl.store(out_row + n_sel + tl.cumsum(taken, axis=0) - 1, idx, mask=take)
    return n_sel + tl.sum(taken, axis=0), n_tie + tl.sum(tie, axis=0)


@triton.jit(do_not_specialize=["T", "M", "k", "out_stride"])
def _select_kernel(s_ptr, m_ptr, cid_ptr, out_ptr, T, M, k, out_stride, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
                   CHUNK: tl.constexpr, BLOCK_PAD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s_row, m_row, cid_row, out_row = s_ptr + row * T, m_ptr + row * M, cid_ptr + row * M, out_ptr + row * out_stride
    keys0 = _maxima_keys(m_row, 0, M, BLOCK_M)
    tau = _chunk_threshold(keys0, m_row, M, k, BLOCK_M)
    n_q = _emit_chunks(keys0, 0, tau, cid_row, 0, BLOCK_M)
    for j in range(BLOCK_M, M, BLOCK_M):
        n_q = _emit_chunks(_maxima_keys(m_row, j, M, BLOCK_M), j, tau, cid_row, n_q, BLOCK_M)
    tl.debug_barrier()  # chunk ids stored by every thread are read back by others
    keys0, idx0 = _candidates(s_row, cid_row, 0, n_q, T, tau, BLOCK_C, CHUNK)
    thr, room = _kth_key(keys0, s_row, cid_row, n_q, T, tau, k, BLOCK_C, CHUNK)
    n_sel, n_tie = _emit(keys0, idx0, thr, room, out_row, 0, 0)
    for j in range(BLOCK_C, n_q, BLOCK_C):
        keys, idx = _candidates(s_row, cid_row, j, n_q, T, tau, BLOCK_C, CHUNK)
        n_sel, n_tie = _emit(keys, idx, thr, room, out_row, n_sel, n_tie)
    for j in range(n_sel, k, BLOCK_PAD):
        offs = j + tl.arange(0, BLOCK_PAD)
        tl.store(out_row + offs, -1, mask=offs < k)


def launch_select(scores: Tensor, maxima: Tensor, k: int, out: Tensor, max_block_m: int = 8192,
                   max_block_c: int = 512) -> None:
    """One program per row; the block caps keep 16 warps within registers (tests lower them to loop). `out`'s
    rows may be evenly strided (the static decoder's index list, whose window part comes first)."""
    num_keys, num_chunks = scores.shape[-1], maxima.shape[-1]
    rows = scores.numel() // max(1, num_keys)
    chunk_ids = torch.empty(rows, num_chunks, dtype=torch.int32, device=scores.device)
    pow2 = triton.next_power_of_2(num_chunks)
    _select_kernel[(rows,)](
        scores, maxima, chunk_ids, out, num_keys, num_chunks, k, out.stride(-2),
        BLOCK_M=min(max_block_m, max(16, pow2)), BLOCK_C=min(max_block_c, pow2), CHUNK=CHUNK,
        BLOCK_PAD=min(1024, max(16, triton.next_power_of_2(k))), num_warps=4 if interpreting() else 16)
