"""Sparse attention over gathered key rows (DeepSeek V4: one shared K=V vector per token, a per-head
sink in the softmax denominator), for decode and prefill, from a bf16/fp32 or an FP8-packed cache.

Design. Every query row (b, s) attends the key rows `indices[b, s]` of `kv[b]` (-1: unused slot), and all
H heads of the row share them, so a program puts BLOCK_H heads in the M dimension of both dots: a gathered
tile is loaded once and used for QK^T and, because K = V, again for PV. Per query that is 4 H K D flops
over K D 2 bytes (bf16): 2H = 128 flop/byte at H = 64, under the H100's ridge (~260), so decode is memory
bound yet needs the tensor cores at about a third of peak; keeping the tile on chip for both dots is what
matters. The fp32 accumulator stays whole along D (splitting D across programs would redo QK^T); BLOCK_H
(16..64) and num_warps are autotuned so that [BLOCK_H, 512] fp32 fits the registers.

Grid: one flat axis over (head block, split, row), head block fastest, so the programs that gather the same
rows run side by side and share them through L2. Decode (few rows) splits the K slots into NUM_SPLITS
chunks of at least MIN_CHUNK so that rows x splits fill the SMs (flash-decoding); each chunk writes its
normalised output and base-2 log-sum-exp in fp32 and `_combine_kernel` merges them with the sink. Prefill
(rows >= SMs) runs one split and writes the output directly. Softmax is online, in base 2 with log2(e)
folded into the scale; the sink joins the denominator at the end, so a row with no used slot gives zeros.

FP8 cache rows are 584 bytes: 448 e4m3 codes (7 blocks of 64, each with a ue8m0 scale), the 64 RoPE dims
as bf16, the 7 scale bytes and a pad byte. A tile is loaded as [BLOCK_N, 8, 64] (7 code blocks, then the
RoPE dims from the bf16 view of the same rows), dequantised in registers to q's dtype (exact: an e4m3 code
times a power of two fits bf16) and reshaped to [BLOCK_N, 512] for the same dots; row offsets are passed in
8-byte units so the compiler can vectorise the 8-byte-aligned rows. 584 bytes per row instead of 1024 puts
the FP8 path at ~224 flop/byte, about the ridge: expect it to be bound by the bf16 tensor cores.

Indices must not repeat within a row (the model never produces duplicates): the reference counts a
repeated slot once, the kernel once per occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import interpreting, num_sms

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)
MIN_CHUNK = 256  # fewest slots per split: a split's partial (H x D fp32) costs as much as 128 bf16 rows
MAX_SPLITS = 64
KV_DIM, ROPE_DIM, NOPE_DIM, SCALE_BLOCK = 512, 64, 448, 64
PACKED_DIM = 584  # 448 e4m3 + 64 x 2 bf16 + 7 ue8m0 + 1 pad
SCALES_AT = NOPE_DIM + 2 * ROPE_DIM
FP8_MAX = 448.0


DEQUANT_MIN_ROWS = 256  # from this many query rows on, FP8 rows are dequantised once, not per query


@dataclass(frozen=True)
class KeyPrefix:
    """Slots that follow each row's listed indices: kv rows `first .. first + count - 1`, of which query row
    (b, s) uses the first `lengths[b, s]` (int32 [B, S], or [S] for every batch row). HCA's compressed
    entries are such a run (a query sees every entry whose window has closed), so a prefill chunk passes
    one length per query instead of a [B, S, T] index list that grows with the context."""

    first: int
    count: int
    lengths: Tensor

    def row_lengths(self, batch: int, seq_len: int) -> Tensor:
        """int32 [B * S] as the kernel reads them (no copy for a contiguous int32 [B, S]; the kernel itself
        keeps each length within [0, count], so a graphed step adds no clamp kernel)."""
        lengths = self.lengths.expand(batch, seq_len) if self.lengths.dim() == 1 else self.lengths
        return lengths.to(torch.int32).contiguous().view(-1)

    def as_indices(self, dtype: torch.dtype) -> Tensor:
        """The same slots as an index list [B or 1, S, count] (-1 past a row's length): the reference's form."""
        lengths = self.lengths if self.lengths.dim() == 2 else self.lengths[None]
        slots = torch.arange(self.count, device=lengths.device)
        return torch.where(slots < lengths[..., None], slots + self.first, -1).to(dtype)


# ----------------------------------------------------------------------------------------- references
def sparse_attention_reference(q: Tensor, kv: Tensor, indices: Tensor, sink: Tensor, scale: float,
                               prefix: KeyPrefix | None = None) -> Tensor:
    """Attention of each query over the key rows its indices name, the model's dense masked way.

    Args: q [B, S, H, D]; kv [B, T, D] (q's dtype); indices [B, S, K] int32/int64 in [0, T) or -1 (unused),
    no repeats in a row; sink [H] float32; scale the logit scale; `prefix` more slots per row, a run of
    consecutive rows (see KeyPrefix), which must not repeat a listed row.
    Returns [B, S, H, D] in q's dtype: softmax over the used slots plus the sink (its column dropped),
    computed in float32; a query with no used slot gives zeros.
    """
    _check_inputs(q, kv, indices, sink, packed=False, prefix=prefix)
    if prefix is not None:
        indices = torch.cat([indices, prefix.as_indices(indices.dtype).expand(indices.shape[0], -1, -1)], dim=-1)
    batch, seq_len = q.shape[:2]
    visible = _visibility(indices, kv.shape[1])  # [B, S, T]
    keys = kv.float()
    scores = torch.einsum("bshd,btd->bhst", q.float(), keys) * scale
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    sinks = sink.float().view(1, -1, 1, 1).expand(batch, -1, seq_len, 1)
    probs = torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]
    return torch.einsum("bhst,btd->bshd", probs, keys).to(q.dtype)


def _visibility(indices: Tensor, num_keys: int) -> Tensor:
    """[B, S, T] bool of the slots in use: -1 is scattered into an extra column that is then dropped."""
    slots = torch.where(indices < 0, num_keys, indices).long()
    visible = torch.zeros(*indices.shape[:2], num_keys + 1, dtype=torch.bool, device=indices.device)
    return visible.scatter_(2, slots, True)[..., :num_keys]


def sparse_attention_fp8_reference(q: Tensor, kv_packed: Tensor, indices: Tensor, sink: Tensor,
                                   scale: float, prefix: KeyPrefix | None = None) -> Tensor:
    """`sparse_attention_reference` over `dequantize_kv_fp8(kv_packed, q.dtype)`; kv_packed [B, T, 584] uint8."""
    _check_inputs(q, kv_packed, indices, sink, packed=True, prefix=prefix)
    return sparse_attention_reference(q, dequantize_kv_fp8(kv_packed, q.dtype), indices, sink, scale, prefix)


# ------------------------------------------------------------------------------------ FP8 cache rows
def quantize_kv_fp8(kv: Tensor, rope_dim: int = ROPE_DIM) -> Tensor:
    """Pack K=V rows for the FP8 cache.

    Args: kv [..., 512] bf16/fp16/fp32; rope_dim must be 64 (the layout is fixed).
    Returns [..., 584] uint8: bytes [0, 448) e4m3 codes of the first 448 dims, in 7 blocks of 64 each scaled
    by a power of two (amax / 448 rounded up, so nothing saturates); [448, 576) the last 64 dims as bf16,
    little-endian; [576, 583) the 7 scales as ue8m0 (exponent + 127); byte 583 zero.
    """
    if kv.shape[-1] != KV_DIM or rope_dim != ROPE_DIM:
        raise ValueError(f"the FP8 KV layout needs D == {KV_DIM} and rope_dim == {ROPE_DIM}, "
                         f"got D = {kv.shape[-1]}, rope_dim = {rope_dim}")
    if not kv.is_floating_point():
        raise ValueError(f"quantize_kv_fp8 needs a float tensor, got {kv.dtype}")
    nope = kv[..., :NOPE_DIM].float().unflatten(-1, (-1, SCALE_BLOCK))  # [..., 7, 64]
    amax = nope.abs().amax(dim=-1, keepdim=True).clamp(min=FP8_MAX * 2.0**-126)
    mantissa, exponent = torch.frexp(amax * (1.0 / FP8_MAX))  # the float32 reciprocal on every device
    exponent = torch.where(mantissa == 0.5, exponent - 1, exponent)  # 2**exponent >= amax / 448, tight
    codes = (nope * torch.exp2(-exponent.float())).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    rope = kv[..., NOPE_DIM:].to(torch.bfloat16).contiguous().view(torch.uint8)
    scales = (exponent.squeeze(-1) + 127).to(torch.uint8)
    pad = torch.zeros_like(scales[..., :1])
    return torch.cat([codes.view(torch.uint8).flatten(-2), rope, scales, pad], dim=-1)


def _check_packed(packed: Tensor) -> None:
    if packed.dtype != torch.uint8 or packed.shape[-1] != PACKED_DIM:
        raise ValueError(f"packed FP8 KV rows must be uint8 [..., {PACKED_DIM}], got {packed.dtype} "
                         f"{tuple(packed.shape)}")


def dequantize_kv_fp8(packed: Tensor, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Unpack `quantize_kv_fp8` rows: [..., 584] uint8 -> [..., 512] in `dtype`."""
    _check_packed(packed)
    codes = packed[..., :NOPE_DIM].contiguous().view(torch.float8_e4m3fn).float()
    scales = packed[..., SCALES_AT:SCALES_AT + NOPE_DIM // SCALE_BLOCK].contiguous().view(torch.float8_e8m0fnu)
    nope = codes.unflatten(-1, (-1, SCALE_BLOCK)) * scales.float().unsqueeze(-1)
    rope = packed[..., NOPE_DIM:SCALES_AT].contiguous().view(torch.bfloat16).float()
    return torch.cat([nope.flatten(-2), rope], dim=-1).to(dtype)


# ------------------------------------------------------------------------------------------- kernels
# (BLOCK_H, BLOCK_N, num_warps, num_stages), chosen from sm_90 builds (ptxas: no or tiny spills at D = 512):
# BLOCK_H = 64 runs wgmma; the FP8 tile's dequantisation needs registers, so FP8 keeps 16-head blocks.
# fp32 (ieee dots on FMAs) builds without spills only at the smallest tile.
_SMALLEST = (16, 16, 4, 1)
_SHAPES = {False: ((64, 16, 8, 2), (64, 16, 8, 3), (32, 32, 8, 3), (32, 64, 8, 2), (16, 64, 8, 2), (16, 32, 4, 2),
                   _SMALLEST),
           True: ((64, 16, 8, 2), (16, 32, 8, 2), (16, 64, 8, 2), (16, 32, 4, 2), _SMALLEST)}


def _configs() -> list[triton.Config]:
    if interpreting():  # one small config: the interpreter is slow
        return [triton.Config({"BLOCK_H": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    shapes = dict.fromkeys(_SHAPES[False] + _SHAPES[True])  # the union, in order
    return [triton.Config({"BLOCK_H": h, "BLOCK_N": n}, num_warps=w, num_stages=s) for h, n, w, s in shapes]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """The path's shapes (bf16/fp16, FP8 rows, fp32), without head blocks wider than the heads."""
    if interpreting():
        return configs
    shapes = (_SMALLEST,) if named_args["q_ptr"].dtype == torch.float32 else _SHAPES[bool(kwargs["FP8"])]
    widest = max(16, triton.next_power_of_2(named_args["HEADS"]))
    kept = [c for c in configs if (c.kwargs["BLOCK_H"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in shapes]
    return [c for c in kept if c.kwargs["BLOCK_H"] <= widest]


@triton.jit
def _load_keys(kv_ptr, rope_ptr, offsets, valid, offs_d, DIM: tl.constexpr, BLOCK_N: tl.constexpr,
               FP8: tl.constexpr, dtype: tl.constexpr):
    """The gathered tile [BLOCK_N, BLOCK_D] in `dtype`. `offsets`: the rows' element offsets, or for FP8 their
    byte offsets over 8 (so the compiler sees 8-byte aligned rows and vectorises the 584-byte rows' loads)."""
    if FP8:
        bytes_at = offsets * 8
        blocks, within = tl.arange(0, 8), tl.arange(0, 64)  # [BLOCK_N, 8, 64]: 7 e4m3 blocks, then RoPE
        codes = tl.load(kv_ptr + bytes_at[:, None, None] + (blocks * 64)[None, :, None] + within[None, None, :],
                        mask=valid[:, None, None] & (blocks < 7)[None, :, None], other=0)
        exps = tl.load(kv_ptr + bytes_at[:, None] + 576 + blocks[None, :],
                       mask=valid[:, None] & (blocks < 7)[None, :], other=127).to(tl.int32)
        scales = tl.where(exps == 0, 5.877471754111438e-39, (exps << 23).to(tl.float32, bitcast=True))
        nope = (codes.to(tl.float8e4nv, bitcast=True).to(tl.float32) * scales[:, :, None]).to(dtype)
        rope_at = offsets * 4 + 224  # the same rows in the bf16 view
        rope = tl.load(rope_ptr + rope_at[:, None] + within[None, :], mask=valid[:, None], other=0.0).to(dtype)
        tile = tl.where((blocks == 7)[None, :, None], rope[:, None, :], nope)
        return tl.reshape(tile, (BLOCK_N, 512))
    else:
        tile = tl.load(kv_ptr + offsets[:, None] + offs_d[None, :],
                       mask=valid[:, None] & (offs_d < DIM)[None, :], other=0.0)
        return tile.to(dtype)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b with fp32 accumulation. UPCAST (interpreter + bf16 only): Triton's interpreter multiplies the raw
    uint16 bits of bf16 operands, so they go in as the fp32 values they hold; same products, same sums."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.autotune(configs=_configs(), key=["HEADS", "K_BUCKET", "ROWS_BUCKET", "DIM", "NUM_SPLITS", "FP8"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _sparse_attention_kernel(q_ptr, kv_ptr, rope_ptr, idx_ptr, prefix_ptr, sink_ptr, out_ptr, part_ptr, lse_ptr,
                             stride_kb, stride_kt, seq_len, HEADS, num_keys, num_listed, num_slots, prefix_first,
                             qk_scale, K_BUCKET, ROWS_BUCKET, DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                             NUM_SPLITS: tl.constexpr, FP8: tl.constexpr, PREFIX: tl.constexpr,
                             PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_H: tl.constexpr,
                             BLOCK_N: tl.constexpr):
    """One (head block, split, row): online softmax over the split's slots; output or partial + lse. Slots
    [0, num_listed) are read from the row's index list; with PREFIX, slot num_listed + j is kv row
    prefix_first + j for j below the row's prefix length, and the loop stops at the row's last used slot."""
    pid = tl.program_id(0)
    head_blocks = tl.cdiv(HEADS, BLOCK_H)
    split = (pid // head_blocks) % NUM_SPLITS
    row = pid // (head_blocks * NUM_SPLITS)
    offs_h = (pid % head_blocks) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    head_ok = offs_h < HEADS
    io_mask = head_ok[:, None] & (offs_d < DIM)[None, :]
    io_offsets = (row.to(tl.int64) * HEADS + offs_h[:, None]) * DIM + offs_d[None, :]  # [BLOCK_H, BLOCK_D]
    q = tl.load(q_ptr + io_offsets, mask=io_mask, other=0.0)
    batch_offset = (row // seq_len).to(tl.int64) * stride_kb
    tiles = tl.cdiv(tl.cdiv(num_slots, BLOCK_N), NUM_SPLITS)
    lo = split * tiles * BLOCK_N
    hi = tl.minimum(lo + tiles * BLOCK_N, num_slots)
    if PREFIX:
        hi = tl.minimum(hi, num_listed + tl.maximum(tl.load(prefix_ptr + row), 0))  # and <= num_slots: <= count

    m = tl.full([BLOCK_H], -1.0e30, tl.float32)  # finite: an all-masked tile gives exp2(-inf) = 0, not NaN
    l = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        idx = tl.load(idx_ptr + row.to(tl.int64) * num_listed + offs_n, mask=(offs_n < hi) & (offs_n < num_listed),
                      other=-1)
        if PREFIX:
            idx = tl.where((offs_n >= num_listed) & (offs_n < hi), prefix_first + offs_n - num_listed, idx)
        valid = (idx >= 0) & (idx < num_keys)
        offsets = batch_offset + tl.where(valid, idx, 0).to(tl.int64) * stride_kt
        keys = _load_keys(kv_ptr, rope_ptr, offsets, valid, offs_d, DIM, BLOCK_N, FP8, q.dtype)
        s = _dot(q, tl.trans(keys), PRECISION, UPCAST) * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(keys.dtype), keys, PRECISION, UPCAST)
        m = m_new

    if NUM_SPLITS == 1:
        sink = tl.load(sink_ptr + offs_h, mask=head_ok, other=0.0) * _LOG2E
        top = tl.maximum(m, sink)
        keep = tl.exp2(m - top)
        out = acc * (keep / (l * keep + tl.exp2(sink - top)))[:, None]
        tl.store(out_ptr + io_offsets, out.to(out_ptr.dtype.element_ty), mask=io_mask)
    else:
        part = (row.to(tl.int64) * NUM_SPLITS + split) * HEADS + offs_h  # [BLOCK_H]
        tl.store(part_ptr + part[:, None] * DIM + offs_d[None, :], acc / tl.where(l > 0, l, 1.0)[:, None],
                 mask=io_mask)
        tl.store(lse_ptr + part, tl.where(l > 0, m + tl.log2(tl.where(l > 0, l, 1.0)), float("-inf")), mask=head_ok)


@triton.jit
def _combine_kernel(part_ptr, lse_ptr, sink_ptr, out_ptr, HEADS, DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr):
    """One (row, head): merge the splits' partials by their log-sum-exp, with the sink in the denominator."""
    pid = tl.program_id(0)
    row, head = pid // HEADS, pid % HEADS
    base = row.to(tl.int64) * NUM_SPLITS * HEADS + head
    offs_s = tl.arange(0, BLOCK_S)
    lse = tl.load(lse_ptr + base + offs_s * HEADS, mask=offs_s < NUM_SPLITS, other=float("-inf"))
    sink = tl.load(sink_ptr + head) * _LOG2E
    top = tl.maximum(tl.max(lse, 0), sink)
    denom = tl.sum(tl.exp2(lse - top), 0) + tl.exp2(sink - top)
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for i in range(NUM_SPLITS):
        weight = tl.exp2(tl.load(lse_ptr + base + i * HEADS) - top)
        acc += weight * tl.load(part_ptr + (base + i * HEADS) * DIM + offs_d, mask=offs_d < DIM, other=0.0)
    out = acc / denom
    tl.store(out_ptr + (row.to(tl.int64) * HEADS + head) * DIM + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < DIM)


# ------------------------------------------------------------------------------------------ launchers
def sparse_attention(q: Tensor, kv: Tensor, indices: Tensor, sink: Tensor, scale: float,
                     prefix: KeyPrefix | None = None) -> Tensor:
    """Triton `sparse_attention_reference` (same contract); CUDA tensors, or CPU under TRITON_INTERPRET=1.
    D must be a multiple of 16 up to 512. Slots outside [0, T) are skipped, not checked (no host sync)."""
    _check_inputs(q, kv, indices, sink, packed=False, prefix=prefix)
    if q.shape[-1] % 16 or q.shape[-1] > KV_DIM:
        raise ValueError(f"the kernel needs head_dim a multiple of 16 up to {KV_DIM}, got {q.shape[-1]}")
    return _launch(q, kv, indices, sink, scale, fp8=False, prefix=prefix)


def sparse_attention_fp8(q: Tensor, kv_packed: Tensor, indices: Tensor, sink: Tensor, scale: float,
                         prefix: KeyPrefix | None = None) -> Tensor:
    """Triton `sparse_attention_fp8_reference`: kv_packed [B, T, 584] uint8 rows. Few query rows (decode)
    dequantise each gathered tile in the kernel; from DEQUANT_MIN_ROWS rows on (prefill) the rows are
    dequantised once (exactly, to q's dtype) and the q-dtype kernel runs: a tile is then not dequantised
    again for every query and head block, and the 64-head blocks that FP8 tiles cannot afford run."""
    _check_inputs(q, kv_packed, indices, sink, packed=True, prefix=prefix)
    if q.shape[0] * q.shape[1] >= DEQUANT_MIN_ROWS:
        return _launch(q, dequantize_kv_rows(kv_packed, q.dtype), indices, sink, scale, fp8=False, prefix=prefix)
    return _launch(q, kv_packed, indices, sink, scale, fp8=True, prefix=prefix)


def dequantize_kv_rows(packed: Tensor, dtype: torch.dtype) -> Tensor:
    """Triton `dequantize_kv_fp8` (the same values: the attention kernel's own tile dequantisation), one read
    of the 584-byte rows and one write of the [..., 512] rows."""
    _check_packed(packed)
    flat = packed.reshape(-1, PACKED_DIM)
    if flat.stride(0) % 8:
        flat = flat.contiguous()
    out = torch.empty(*packed.shape[:-1], KV_DIM, dtype=dtype, device=packed.device)
    if flat.shape[0]:
        block = 16 if interpreting() else 64
        _dequantize_kernel[(triton.cdiv(flat.shape[0], block),)](flat, flat.view(torch.bfloat16), out, flat.shape[0],
                                                                 flat.stride(0) // 8, BLOCK_N=block, num_warps=4)
    return out


@triton.jit
def _dequantize_kernel(kv_ptr, rope_ptr, out_ptr, rows, stride_r, BLOCK_N: tl.constexpr):
    """BLOCK_N packed rows -> [BLOCK_N, 512] in the output's dtype (row strides in 8-byte units)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    valid = offs_n < rows
    offs_d = tl.arange(0, 512)
    tile = _load_keys(kv_ptr, rope_ptr, offs_n.to(tl.int64) * stride_r, valid, offs_d, 512, BLOCK_N, True,
                      out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs_n.to(tl.int64)[:, None] * 512 + offs_d[None, :], tile, mask=valid[:, None])


def _launch(q: Tensor, kv: Tensor, indices: Tensor, sink: Tensor, scale: float, fp8: bool,
            num_splits: int | None = None, out: Tensor | None = None, prefix: KeyPrefix | None = None) -> Tensor:
    """Launch the attention kernel (and the combine when split); `num_splits`/`out` let tests force a path."""
    batch, seq_len, heads, dim = q.shape
    rows, num_listed = batch * seq_len, indices.shape[-1]
    num_slots = num_listed + (prefix.count if prefix is not None else 0)
    q, indices, sink = q.contiguous(), indices.contiguous(), sink.contiguous()
    if kv.stride(-1) != 1 or (fp8 and (kv.stride(0) % 8 or kv.stride(1) % 8)):
        kv = kv.contiguous()
    out = torch.empty_like(q, memory_format=torch.contiguous_format) if out is None else out
    if rows == 0 or heads == 0:
        return out
    if num_splits is None:
        num_splits = _num_splits(rows, num_slots, q.device)
    part, lse = _workspace(rows, num_splits, heads, dim, q.device) if num_splits > 1 else (out, sink)
    lengths = prefix.row_lengths(batch, seq_len) if prefix is not None else indices  # unread without a prefix
    rope = kv.view(torch.bfloat16) if fp8 else kv  # the packed rows' RoPE dims, read as bf16
    stride_b, stride_t = (kv.stride(0) // 8, kv.stride(1) // 8) if fp8 else (kv.stride(0), kv.stride(1))
    grid = lambda meta: (triton.cdiv(heads, meta["BLOCK_H"]) * num_splits * rows,)  # noqa: E731
    _sparse_attention_kernel[grid](
        q, kv, rope, indices, lengths, sink, out, part, lse, stride_b, stride_t, seq_len, heads, kv.shape[1],
        num_listed, num_slots, prefix.first if prefix is not None else 0, scale * LOG2E,
        triton.next_power_of_2(max(num_slots, 1)), min(triton.next_power_of_2(rows), 4096),
        DIM=dim, BLOCK_D=triton.next_power_of_2(dim), NUM_SPLITS=num_splits, FP8=fp8, PREFIX=prefix is not None,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", UPCAST=interpreting() and q.dtype == torch.bfloat16)
    if num_splits > 1:
        _combine_kernel[(rows * heads,)](part, lse, sink, out, heads, DIM=dim, BLOCK_D=triton.next_power_of_2(dim),
                                         NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits))
    return out


def _num_splits(rows: int, num_slots: int, device: torch.device) -> int:
    """Splits of the K slots so that rows x splits covers the SMs, each split at least MIN_CHUNK slots."""
    sms = num_sms(device, 4)
    if rows >= sms:
        return 1
    return max(1, min(triton.cdiv(num_slots, MIN_CHUNK), triton.cdiv(sms, rows), MAX_SPLITS))


def _workspace(rows: int, num_splits: int, heads: int, dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-split normalised outputs [rows, splits, H, D] and base-2 log-sum-exps [rows, splits, H], fp32."""
    return (torch.empty(rows, num_splits, heads, dim, dtype=torch.float32, device=device),
            torch.empty(rows, num_splits, heads, dtype=torch.float32, device=device))


def _check_inputs(q: Tensor, kv: Tensor, indices: Tensor, sink: Tensor, packed: bool,
                  prefix: KeyPrefix | None = None) -> None:
    """Shapes and dtypes of the public entry points, with messages naming the tensor."""
    if q.dim() != 4 or q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"q must be [B, S, H, D] bf16/fp16/fp32, got {q.dtype} {tuple(q.shape)}")
    batch, seq_len, heads, dim = q.shape
    if packed:
        if dim != KV_DIM or kv.dtype != torch.uint8 or kv.dim() != 3 or kv.shape[-1] != PACKED_DIM:
            raise ValueError(f"the FP8 path needs q with D = {KV_DIM} and kv_packed uint8 [B, T, {PACKED_DIM}], "
                             f"got q D = {dim}, kv_packed {kv.dtype} {tuple(kv.shape)}")
    elif kv.dim() != 3 or kv.shape[-1] != dim or kv.dtype != q.dtype:
        raise ValueError(f"kv must be [B, T, D] = [{batch}, T, {dim}] in {q.dtype}, got {kv.dtype} {tuple(kv.shape)}")
    if kv.shape[0] != batch:
        raise ValueError(f"kv has batch {kv.shape[0]} but q has {batch}")
    if (indices.dim() != 3 or tuple(indices.shape[:2]) != (batch, seq_len)
            or indices.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"indices must be int32/int64 [B, S, K] = [{batch}, {seq_len}, K], got {indices.dtype} "
                         f"{tuple(indices.shape)}")
    if sink.dtype != torch.float32 or tuple(sink.shape) != (heads,):
        raise ValueError(f"sink must be float32 [H] = [{heads}], got {sink.dtype} {tuple(sink.shape)}")
    if prefix is not None:
        if (prefix.lengths.dtype not in (torch.int32, torch.int64)
                or tuple(prefix.lengths.shape) not in ((seq_len,), (batch, seq_len))):
            raise ValueError(f"prefix lengths must be int32/int64 [S] or [B, S] = [{batch}, {seq_len}], got "
                             f"{prefix.lengths.dtype} {tuple(prefix.lengths.shape)}")
        if prefix.first < 0 or prefix.count < 0 or prefix.first + prefix.count > kv.shape[1]:
            raise ValueError(f"prefix rows {prefix.first}..{prefix.first + prefix.count - 1} are not within the "
                             f"{kv.shape[1]} kv rows")
    tensors = (q, kv, indices, sink) + ((prefix.lengths,) if prefix is not None else ())
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"q, kv, indices, sink (and prefix lengths) must be on one device, got "
                         f"{sorted(map(str, devices))}")
