"""MoE routing of DeepSeek V4 (model/moe.py): scores, top-k (or hash) expert ids and their weights.

Routing (`route`): one program per BLOCK_T token rows with all E scores in registers, then k argmax
passes over score + bias, ties to the lowest expert id (torch.topk leaves the tie order unspecified).
Expert ids are not range-checked on the device (that needs a host sync): ids outside [0, E) leave
their rows of the result undefined.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

SCORINGS = ("sqrtsoftplus", "sigmoid", "softmax")


def _alloc(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer `route` fills (tests replace it to poison outputs with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _scores(logits: Tensor, scoring: str) -> Tensor:
    if scoring == "sqrtsoftplus":
        return F.softplus(logits).sqrt()
    if scoring == "sigmoid":
        return logits.sigmoid()
    return logits.softmax(dim=-1)


def route_reference(logits: Tensor, bias: Tensor | None, hash_ids: Tensor | None, k: int, scoring: str,
                    normalize: bool, scaling: float) -> tuple[Tensor, Tensor]:
    """Routing weights and expert ids per token: model/moe.py `Gate.forward` after its matmul.

    Args: logits [N, E] float32; bias [E] (score routing) or None; hash_ids [N, k] (hash routing) or None.
    Returns: (weights [N, k] float32, ids [N, k] int64).
    """
    _check_route(logits, bias, hash_ids, k, scoring)
    scores = _scores(logits.float(), scoring)
    if hash_ids is not None:
        ids = hash_ids.long()
    else:
        keys = scores if bias is None else scores + bias.float()
        ids = torch.topk(keys, k, dim=-1).indices
    weights = scores.gather(-1, ids)
    if normalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling, ids


@triton.jit
def _route_scores(logits, emask, SCORING: tl.constexpr):
    """Scores of a [BLOCK_T, BLOCK_E] logit tile; softplus as max(x, 0) + log1p(exp(-|x|)) (stable)."""
    if SCORING == 0:
        u = tl.exp(-tl.abs(logits))
        w = 1.0 + u
        log1p = tl.where(w == 1.0, u, tl.log(w) * u / tl.where(w == 1.0, 1.0, w - 1.0))  # exact log1p
        scores = tl.sqrt_rn(tl.maximum(logits, 0.0) + log1p)
    elif SCORING == 1:
        scores = tl.sigmoid(logits)
    else:
        shifted = tl.where(emask[None, :], logits, float("-inf"))
        e = tl.exp(shifted - tl.max(shifted, axis=1)[:, None])
        scores = e / tl.sum(e, axis=1)[:, None]
    return scores


@triton.jit
def _route_kernel(logits_ptr, bias_ptr, hash_ptr, weights_ptr, ids_ptr, N, E, scaling,
                  K: tl.constexpr, SCORING: tl.constexpr, HAS_BIAS: tl.constexpr, HASHED: tl.constexpr,
                  NORMALIZE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    experts = tl.arange(0, BLOCK_E)
    slots = tl.arange(0, BLOCK_K)[None, :]
    rmask, emask = rows < N, experts < E
    logits = tl.load(logits_ptr + rows.to(tl.int64)[:, None] * E + experts[None, :],
                     mask=rmask[:, None] & emask[None, :], other=0.0)
    scores = _route_scores(logits, emask, SCORING)
    out_offs = rows.to(tl.int64)[:, None] * K + slots
    out_mask = rmask[:, None] & (slots < K)
    weights = tl.zeros([BLOCK_T, BLOCK_K], tl.float32)
    if HASHED:
        ids = tl.load(hash_ptr + out_offs, mask=out_mask, other=0).to(tl.int64)
        for j in tl.static_range(K):
            choice = tl.sum(tl.where(slots == j, ids, 0), axis=1)
            picked = tl.sum(tl.where(experts[None, :] == choice[:, None], scores, 0.0), axis=1)
            weights = tl.where(slots == j, picked[:, None], weights)
    else:
        ids = tl.zeros([BLOCK_T, BLOCK_K], tl.int64)
        keys = scores
        if HAS_BIAS:
            keys += tl.load(bias_ptr + experts, mask=emask, other=0.0)[None, :]
        keys = tl.where(emask[None, :], keys, float("-inf"))
        for j in tl.static_range(K):  # k argmax passes; among equal keys the lowest expert id wins
            best = tl.max(keys, axis=1)
            choice = tl.min(tl.where(keys == best[:, None], experts[None, :], BLOCK_E), axis=1)
            pick = experts[None, :] == choice[:, None]
            weights = tl.where(slots == j, tl.sum(tl.where(pick, scores, 0.0), axis=1)[:, None], weights)
            ids = tl.where(slots == j, choice.to(tl.int64)[:, None], ids)
            keys = tl.where(pick, float("-inf"), keys)
    if NORMALIZE:
        weights = weights / (tl.sum(weights, axis=1)[:, None] + 1e-20)
    tl.store(weights_ptr + out_offs, weights * scaling, mask=out_mask)
    tl.store(ids_ptr + out_offs, ids, mask=out_mask)


def _check_route(logits: Tensor, bias: Tensor | None, hash_ids: Tensor | None, k: int, scoring: str) -> None:
    if logits.dim() != 2 or logits.dtype != torch.float32:
        raise ValueError(f"logits must be float32 [N, E], got {logits.dtype} {tuple(logits.shape)}")
    num_tokens, num_experts = logits.shape
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
    if not 1 <= k <= num_experts:
        raise ValueError(f"k must be in [1, {num_experts}] (the number of experts), got {k}")
    if bias is not None and tuple(bias.shape) != (num_experts,):
        raise ValueError(f"bias must be [E] = ({num_experts},), got {tuple(bias.shape)}")
    if hash_ids is not None and (tuple(hash_ids.shape) != (num_tokens, k) or hash_ids.is_floating_point()):
        raise ValueError(f"hash_ids must be integer [N, k] = ({num_tokens}, {k}), got {hash_ids.dtype} "
                         f"{tuple(hash_ids.shape)}")


def route(logits: Tensor, bias: Tensor | None, hash_ids: Tensor | None, k: int, scoring: str, normalize: bool,
          scaling: float) -> tuple[Tensor, Tensor]:
    """Triton `route_reference`: (weights [N, k] float32, ids [N, k] int64); ties go to the lowest id."""
    _check_route(logits, bias, hash_ids, k, scoring)
    num_tokens, num_experts = logits.shape
    weights = _alloc((num_tokens, k), torch.float32, logits.device)
    ids = _alloc((num_tokens, k), torch.int64, logits.device)
    if num_tokens == 0:
        return weights, ids
    block_e = triton.next_power_of_2(num_experts)
    block_t = max(1, min(16, 2048 // block_e))
    bias_arg = bias.float().contiguous() if bias is not None else logits
    hash_arg = hash_ids.contiguous() if hash_ids is not None else ids
    _route_kernel[(triton.cdiv(num_tokens, block_t),)](
        logits.contiguous(), bias_arg, hash_arg, weights, ids, num_tokens, num_experts, float(scaling),
        K=k, SCORING=SCORINGS.index(scoring), HAS_BIAS=bias is not None, HASHED=hash_ids is not None,
        NORMALIZE=normalize, BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=triton.next_power_of_2(k), num_warps=4)
    return weights, ids
