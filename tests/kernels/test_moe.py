"""MoE routing and the grouped expert GEMM against their references, and the references against the model.

Tolerances (||out - ref|| / ||ref||): routing weights 1e-5 (float32 math); expert outputs 1e-5 in float32
and 1e-2 in bfloat16, where the reference itself rounds every intermediate to bf16 (~6e-3 from the
float64 truth at these shapes; the kernel, which rounds only h and each slot's output, ~3e-3). FP8 and
FP4 weights with power-of-two scales are exact in bf16, so the quantised cases share those bounds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from v4.kernels import moe, moe_route
from v4.model.config import HASH_MOE, MOE, V4Config
from v4.model.moe import MoE, Gate
from v4.model.quant import dequantize_fp4, dequantize_fp8, quantize_fp4, quantize_fp8

from .device import KERNEL_DEVICE, needs_kernel

TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}
LIMIT = 10.0


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return float((out - ref).norm() / ref.norm())


@pytest.fixture(autouse=True)
def poisoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer the launchers allocate starts as NaN (or -7 for integers): unwritten elements show."""
    def alloc(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        fill = float("nan") if dtype.is_floating_point else -7
        return torch.full(shape, fill, dtype=dtype, device=device)

    monkeypatch.setattr(moe, "_alloc", alloc)
    monkeypatch.setattr(moe_route, "_alloc", alloc)


def config(scoring: str = "sqrtsoftplus", experts: int = 16, topk: int = 4) -> V4Config:
    return V4Config(vocab_size=50, hidden_size=32, num_hidden_layers=2, n_routed_experts=experts,
                    num_experts_per_tok=topk, moe_intermediate_size=24, scoring_func=scoring,
                    mlp_layer_types=[HASH_MOE, MOE])


def randomize(module: nn.Module, seed: int, experts: int = 16) -> None:
    """Random parameters; tid2eid rows of distinct expert ids."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in module.parameters():
            t.copy_(torch.randn(t.shape, generator=g) * (0.3 if t.dim() == 1 else t.shape[-1] ** -0.5))
        for name, t in module.named_buffers():
            if name.endswith("tid2eid"):
                t.copy_(torch.stack([torch.randperm(experts, generator=g)[: t.shape[1]]
                                     for _ in range(t.shape[0])]))


def routed(tokens: int, experts: int, k: int, seed: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and distinct expert ids per token, as a score-routed gate gives them."""
    g = torch.Generator().manual_seed(seed)
    weights, ids = moe_route.route_reference(torch.randn(tokens, experts, generator=g), None, None, k, "sqrtsoftplus",
                                       True, 1.5)
    return weights.to(device), ids.to(device)


def expert_weights(experts: int, hidden: int, inter: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(experts, inter, hidden, generator=g) * hidden**-0.5,
            torch.randn(experts, inter, hidden, generator=g) * hidden**-0.5,
            torch.randn(experts, hidden, inter, generator=g) * inter**-0.5)


# ---------------------------------------------------------------------- references against the model's math


@pytest.mark.parametrize("scoring", ["sqrtsoftplus", "sigmoid", "softmax"])
@pytest.mark.parametrize("layer", [0, 1], ids=["hash", "score"])
def test_route_reference_is_the_gate(scoring: str, layer: int) -> None:
    cfg = config(scoring)
    gate = Gate(cfg, layer)
    randomize(gate, seed=layer)
    x = torch.randn(9, cfg.hidden_size).bfloat16()
    token_ids = torch.randint(0, cfg.vocab_size, (9,))
    weights, ids = gate(x, token_ids)
    logits = torch.nn.functional.linear(x.float(), gate.weight.float())
    hashed = gate.tid2eid[token_ids] if gate.hashed else None
    bias = None if gate.hashed else gate.bias
    ref_weights, ref_ids = moe_route.route_reference(logits, bias, hashed, cfg.num_experts_per_tok, scoring,
                                               cfg.norm_topk_prob, cfg.routed_scaling_factor)
    assert torch.equal(ref_ids, ids) and torch.equal(ref_weights, weights)


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_experts_reference_is_the_routed_moe(dtype: torch.dtype) -> None:
    cfg = config()
    layer = MoE(cfg, 1)
    randomize(layer, seed=3)
    layer.shared_experts = _Zero()
    layer = layer.to(dtype)
    x = torch.randn(2, 7, cfg.hidden_size).to(dtype)
    token_ids = torch.randint(0, cfg.vocab_size, (2, 7))
    flat = x.reshape(-1, cfg.hidden_size)
    weights, ids = layer.gate(flat, token_ids.reshape(-1))
    stack = [torch.stack([getattr(e, name).weight for e in layer.experts]) for name in ("w1", "w3", "w2")]
    out = moe.moe_experts_reference(flat, weights, ids, *stack, cfg.swiglu_limit)
    assert torch.equal(out, layer(x, token_ids).reshape_as(out))


@pytest.mark.parametrize("shape", [(2, 256, 384), (3, 200, 136)], ids=["blocks", "ragged"])
@pytest.mark.parametrize("scale_dtype", [torch.float8_e8m0fnu, torch.float32, torch.bfloat16])
def test_dequantize_fp8_reference_is_model_quant(shape: tuple[int, int, int], scale_dtype: torch.dtype) -> None:
    w, s = quantize_fp8(torch.randn(shape), ue8m0=scale_dtype == torch.float8_e8m0fnu)
    s = s if scale_dtype == torch.float8_e8m0fnu else s.float().to(scale_dtype)
    assert torch.equal(moe.dequantize_fp8_reference(w, s), dequantize_fp8(w, s))


@pytest.mark.parametrize("cols", [64, 80])
@pytest.mark.parametrize("scale_dtype", [torch.float8_e8m0fnu, torch.float32])
def test_dequantize_fp4_reference_is_model_quant(cols: int, scale_dtype: torch.dtype) -> None:
    w, s = quantize_fp4(torch.randn(3, 40, cols))
    s = s.to(scale_dtype)
    assert torch.equal(moe.dequantize_fp4_reference(w, s), dequantize_fp4(w, s))


# --------------------------------------------------------------------------------------------------- routing


@needs_kernel
@pytest.mark.parametrize("scoring,bias,hashed,normalize,tokens,experts,k", [
    ("sqrtsoftplus", True, False, True, 37, 256, 6),   # V4-Flash routing, ragged token count
    ("sigmoid", False, False, False, 5, 40, 1),        # experts not a power of two, k = 1
    ("softmax", True, False, True, 19, 64, 6),
    ("sqrtsoftplus", False, True, True, 21, 64, 6),    # hash layers: ids given
    ("softmax", False, True, False, 3, 24, 2),
])
def test_route(scoring: str, bias: bool, hashed: bool, normalize: bool, tokens: int, experts: int, k: int) -> None:
    g = torch.Generator().manual_seed(tokens)
    logits = (torch.randn(tokens, experts, generator=g) * 3).to(KERNEL_DEVICE)  # tie-free scores
    b = (torch.randn(experts, generator=g) * 0.1).to(KERNEL_DEVICE) if bias else None
    hash_ids = (torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)]).to(KERNEL_DEVICE)
                if hashed else None)
    weights, ids = moe_route.route(logits, b, hash_ids, k, scoring, normalize, 1.5)
    ref_weights, ref_ids = moe_route.route_reference(logits, b, hash_ids, k, scoring, normalize, 1.5)
    assert ids.dtype == torch.int64 and torch.equal(ids, ref_ids)
    assert rel_error(weights, ref_weights) < 1e-5


@needs_kernel
def test_route_ties_go_to_the_lowest_expert() -> None:
    """torch.topk leaves the order of ties unspecified; the kernel takes the lowest id first."""
    logits = torch.zeros(3, 12)
    logits[1, [9, 4, 7]] = 2.0  # a three-way tie at the top
    logits[2, [10, 2]] = -1.0   # ties below the rest
    bias = torch.zeros(12)
    _, ids = moe_route.route(logits.to(KERNEL_DEVICE), bias.to(KERNEL_DEVICE), None, 4, "sqrtsoftplus", True, 1.0)
    assert ids.cpu().tolist() == [[0, 1, 2, 3], [4, 7, 9, 0], [0, 1, 3, 4]]


def test_route_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="float32"):
        moe_route.route(torch.zeros(2, 8, dtype=torch.bfloat16), None, None, 2, "sigmoid", True, 1.0)
    with pytest.raises(ValueError, match="k must be"):
        moe_route.route(torch.zeros(2, 8), None, None, 9, "sigmoid", True, 1.0)
    with pytest.raises(ValueError, match="scoring"):
        moe_route.route(torch.zeros(2, 8), None, None, 2, "relu", True, 1.0)
    with pytest.raises(ValueError, match="hash_ids"):
        moe_route.route(torch.zeros(2, 8), None, torch.zeros(2, 3, dtype=torch.long), 2, "sigmoid", True, 1.0)


# ----------------------------------------------------------------------------------------------- the plan


@needs_kernel
def test_plan_covers_every_pair_once() -> None:
    ids = torch.tensor([[3, 1], [3, 0], [5, 3], [3, 1], [0, 5]] * 7, device=KERNEL_DEVICE)  # 2, 4 unused
    order, tiles, t_max = moe._plan(ids, 6, block_m=16)
    experts, first, end = tiles.cpu().long()
    seen = torch.zeros(ids.numel(), dtype=torch.long)
    for e, r0, r1 in zip(experts.tolist(), first.tolist(), end.tolist()):
        if r1 > r0:
            pairs = order.cpu()[r0:r1]
            assert r1 - r0 <= 16 and (ids.cpu().reshape(-1)[pairs] == e).all()
            seen[pairs] += 1
        else:
            assert e == -1
    assert (seen == 1).all() and t_max == ids.numel() // 16 + 7
    assert torch.equal(experts[experts >= 0], torch.tensor([0, 1, 3, 3, 5]))  # 14, 14, 28, 14 pairs


@needs_kernel
def test_plan_gives_no_expert_rows_their_own_tiles_first() -> None:
    """35 NO_EXPERT pairs: three tiles of expert -1 covering exactly their rows, then the experts' tiles."""
    ids = torch.tensor([[3, -1], [-1, 0], [5, -1], [-1, 1], [0, -1]] * 7, device=KERNEL_DEVICE)
    order, tiles, t_max = moe._plan(ids, 6, block_m=16)
    experts, first, end = tiles.cpu().long()
    assert experts[:3].tolist() == [-1] * 3 and first[:3].tolist() == [0, 16, 32] and end[:3].tolist() == [16, 32, 35]
    assert (ids.cpu().reshape(-1)[order.cpu()[:35]] == moe.NO_EXPERT).all()
    assert experts[3:7].tolist() == [0, 1, 3, 5] and first[3].item() == 35 and end[6].item() == 70
    assert (end[7:] == first[7:]).all() and t_max == 70 // 16 + 7


# ------------------------------------------------------------------------------------------ expert GEMMs


def run_plain(tokens: int, hidden: int, inter: int, experts: int, k: int, dtype: torch.dtype,
              ids: torch.Tensor | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    weights, routed_ids = routed(tokens, experts, k, seed, KERNEL_DEVICE)
    ids = routed_ids if ids is None else ids.to(KERNEL_DEVICE)
    x = torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(seed)).to(dtype).to(KERNEL_DEVICE)
    w = [t.to(dtype).to(KERNEL_DEVICE) for t in expert_weights(experts, hidden, inter, seed)]
    return moe.moe_experts(x, weights, ids, *w, LIMIT), moe.moe_experts_reference(x, weights, ids, *w, LIMIT)


@needs_kernel
@pytest.mark.parametrize("tokens,hidden,inter,experts,k,dtype", [
    (7, 80, 96, 8, 6, torch.float32),     # ragged H and I
    (9, 64, 32, 8, 6, torch.bfloat16),
    (1, 64, 96, 16, 6, torch.bfloat16),   # decode: one token, most experts unused
])
def test_experts(tokens: int, hidden: int, inter: int, experts: int, k: int, dtype: torch.dtype) -> None:
    out, ref = run_plain(tokens, hidden, inter, experts, k, dtype)
    assert out.dtype == dtype and out.shape == (tokens, hidden)
    assert rel_error(out, ref) < TOL[dtype]


@needs_kernel
def test_one_expert_gets_every_token() -> None:
    """k = 1, all 40 tokens on expert 2 (three 16-row tiles, the last ragged); experts 0, 1, 3 get none."""
    out, ref = run_plain(40, 64, 32, 4, 1, torch.float32, ids=torch.full((40, 1), 2))
    assert rel_error(out, ref) < TOL[torch.float32]


@needs_kernel
def test_every_token_shares_one_expert() -> None:
    """k = 6 with slot 2 always expert 5: one expert with a tile per 16 tokens, the rest scattered."""
    _, ids = routed(20, 8, 6, seed=4)
    ids[:, 2] = 5
    out, ref = run_plain(20, 32, 64, 8, 6, torch.bfloat16, ids=ids)
    assert rel_error(out, ref) < TOL[torch.bfloat16]


def quantized(kind: str, experts: int, hidden: int, inter: int, scale_dtype: torch.dtype, seed: int) -> list:
    """[w1, w1_scale, w3, w3_scale, w2, w2_scale] built with model.quant."""
    quantize = quantize_fp4 if kind == "fp4" else lambda w: quantize_fp8(w, ue8m0=scale_dtype != torch.float32)
    out = []
    for w in expert_weights(experts, hidden, inter, seed):
        q, s = quantize(w)
        out += [q.to(KERNEL_DEVICE), s.to(scale_dtype).to(KERNEL_DEVICE)]
    return out


@needs_kernel
@pytest.mark.parametrize("kind,tokens,hidden,inter,experts,k,scale_dtype,dtype", [
    ("fp8", 11, 160, 96, 4, 2, torch.float8_e8m0fnu, torch.bfloat16),  # ragged 128-blocks both ways
    ("fp8", 6, 128, 128, 4, 3, torch.float32, torch.float32),
    ("fp4", 11, 64, 96, 4, 2, torch.float8_e8m0fnu, torch.bfloat16),
    ("fp4", 6, 80, 64, 4, 3, torch.float32, torch.float32),            # a ragged 32-group
])
def test_experts_quantized(kind: str, tokens: int, hidden: int, inter: int, experts: int, k: int,
                           scale_dtype: torch.dtype, dtype: torch.dtype) -> None:
    weights, ids = routed(tokens, experts, k, seed=tokens, device=KERNEL_DEVICE)
    x = torch.randn(tokens, hidden).to(dtype).to(KERNEL_DEVICE)
    w = quantized(kind, experts, hidden, inter, scale_dtype, seed=1)
    kernel, reference = ((moe.moe_experts_fp4, moe.moe_experts_fp4_reference) if kind == "fp4" else
                         (moe.moe_experts_fp8, moe.moe_experts_fp8_reference))
    out = kernel(x, weights, ids, *w, LIMIT)
    assert rel_error(out, reference(x, weights, ids, *w, LIMIT)) < TOL[dtype]


@needs_kernel
@pytest.mark.parametrize("kind", ["plain", "fp8", "fp4"])
def test_other_block_shapes(kind: str) -> None:
    """32-row tiles, 32-wide N and K blocks: one FP4 group and a quarter FP8 block per tile."""
    cfg = moe.GemmConfig(32, moe._Tiles(32, 32, 4, 1), moe._Tiles(32, 32, 4, 1))
    weights, ids = routed(6, 4, 2, seed=5, device=KERNEL_DEVICE)
    x = torch.randn(6, 64).bfloat16().to(KERNEL_DEVICE)
    if kind == "plain":
        w = [t.bfloat16().to(KERNEL_DEVICE) for t in expert_weights(4, 64, 64, seed=2)]
        ref, scales, fmt = moe.moe_experts_reference(x, weights, ids, *w, LIMIT), None, moe.PLAIN
    else:
        w = quantized(kind, 4, 64, 64, torch.float8_e8m0fnu, seed=2)
        reference = moe.moe_experts_fp4_reference if kind == "fp4" else moe.moe_experts_fp8_reference
        ref, scales, fmt = reference(x, weights, ids, *w, LIMIT), tuple(w[1::2]), moe.FP4 if kind == "fp4" else moe.FP8
        w = w[0::2]
    out = moe._experts(x, weights, ids, tuple(w), scales, LIMIT, fmt, config=cfg)
    assert rel_error(out, ref) < TOL[torch.bfloat16]


def poison(kind: str, w: list, experts: list[int]) -> list:
    """`w` with NaN in the weights (plain) or the scales (quantised) of `experts` and of one more expert
    just before expert 0 in memory (each stack a view past it), where an id of -1 would point a kernel:
    a kernel reading any of them shows."""
    out = []
    for i, t in enumerate(w):
        t = torch.cat([t[:1], t])
        if kind == "plain" or i % 2:
            rows = t.view(torch.uint8) if t.dtype == torch.float8_e8m0fnu else t
            rows[[0] + [e + 1 for e in experts]] = 255 if t.dtype == torch.float8_e8m0fnu else float("nan")
        out.append(t[1:])
    return out


def launch(kind: str, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w: list
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(grouped GEMM, reference) for `kind` "plain", "fp8" or "fp4"."""
    kernel, reference = {"plain": (moe.moe_experts, moe.moe_experts_reference),
                         "fp8": (moe.moe_experts_fp8, moe.moe_experts_fp8_reference),
                         "fp4": (moe.moe_experts_fp4, moe.moe_experts_fp4_reference)}[kind]
    return kernel(x, weights, ids, *w, LIMIT), reference(x, weights, ids, *w, LIMIT)


def experts_of(kind: str, experts: int, hidden: int, inter: int, dtype: torch.dtype, seed: int) -> list:
    """Plain stacks in `dtype`, or quantised ones (FP8 with float32 scales, FP4 with e8m0) as `quantized`."""
    if kind == "plain":
        return [t.to(dtype).to(KERNEL_DEVICE) for t in expert_weights(experts, hidden, inter, seed)]
    scale_dtype = torch.float32 if kind == "fp8" else torch.float8_e8m0fnu
    return quantized(kind, experts, hidden, inter, scale_dtype, seed)


@needs_kernel
@pytest.mark.parametrize("kind", ["plain", "fp8", "fp4"])
def test_no_expert_rows_are_zero_and_read_no_weights(kind: str) -> None:
    """Expert parallel's layout (one pair per row, k = 1; 24 of 40 rows NO_EXPERT, two tiles of them):
    from NaN-poisoned buffers their rows come back exact zeros, and the experts no row uses hold NaN, as
    does the memory before expert 0, so reading them would show."""
    ids = torch.tensor([-1, 0, -1, 1, -1] * 8, device=KERNEL_DEVICE)[:, None]
    weights = (torch.rand(40, 1, generator=torch.Generator().manual_seed(3)) + 0.5).to(KERNEL_DEVICE)
    x = torch.randn(40, 64, generator=torch.Generator().manual_seed(4)).bfloat16().to(KERNEL_DEVICE)
    w = experts_of(kind, 4, 64, 64, torch.bfloat16, seed=5)
    w = poison(kind, w, [2, 3])
    out, ref = launch(kind, x, weights, ids, w)
    skipped = (ids[:, 0] == moe.NO_EXPERT).cpu()
    assert (out.cpu()[skipped] == 0).all() and (ref.cpu()[skipped] == 0).all()
    assert rel_error(out[~skipped.to(out.device)], ref[~skipped.to(out.device)]) < TOL[torch.bfloat16]


@needs_kernel
@pytest.mark.parametrize("kind", ["plain", "fp4"])
def test_no_expert_slots_add_nothing(kind: str) -> None:
    """k = 3 with NO_EXPERT slots mixed in (token 2 has none left: a zero row); all of them NO_EXPERT
    gives zeros."""
    ids = torch.tensor([[0, -1, 2], [-1, 1, 0], [-1, -1, -1], [2, 1, -1], [1, -1, 0]], device=KERNEL_DEVICE)
    weights = (torch.rand(5, 3, generator=torch.Generator().manual_seed(6)) + 0.5).to(KERNEL_DEVICE)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(7)).float().to(KERNEL_DEVICE)
    w = experts_of(kind, 4, 32, 32, torch.float32, seed=8)
    w = poison(kind, w, [3])
    out, ref = launch(kind, x, weights, ids, w)
    assert (out[2] == 0).all() and rel_error(out, ref) < TOL[torch.float32]
    none, _ = launch(kind, x, weights, torch.full_like(ids, moe.NO_EXPERT), w)
    assert (none == 0).all()


@needs_kernel
def test_experts_deterministic_and_empty() -> None:
    first, _ = run_plain(7, 32, 32, 4, 2, torch.bfloat16, seed=6)
    again, _ = run_plain(7, 32, 32, 4, 2, torch.bfloat16, seed=6)
    assert torch.equal(first, again)
    empty, _ = run_plain(0, 32, 32, 4, 2, torch.bfloat16)
    assert empty.shape == (0, 32)


def test_experts_reject_bad_input() -> None:
    x = torch.zeros(3, 64, dtype=torch.bfloat16)
    weights, ids = torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.long)
    w1 = w3 = torch.zeros(4, 32, 64, dtype=torch.bfloat16)
    w2 = torch.zeros(4, 64, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="w2"):
        moe.moe_experts(x, weights, ids, w1, w3, w2.float(), LIMIT)
    with pytest.raises(ValueError, match="ids"):
        moe.moe_experts(x, weights, ids[:2], w1, w3, w2, LIMIT)
    q, s = quantize_fp8(torch.randn(4, 32, 64))
    q2, s2 = quantize_fp8(torch.randn(4, 64, 32))
    with pytest.raises(ValueError, match="w2_scale"):
        moe.moe_experts_fp8(x, weights, ids, q, s, q, s, q2, s2[:, :1, :0], LIMIT)
    with pytest.raises(ValueError, match="w1"):
        moe.moe_experts_fp4(x, weights, ids, q, s, q, s, q2, s2, LIMIT)
