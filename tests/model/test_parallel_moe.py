"""Expert parallel's MoE selects its pairs without a host sync (issue 28): every (token, slot) pair keeps
its row, those of another rank's experts run as `ops.NO_EXPERT` (a zero row).

On CPU nothing waits, so "no host sync" is checked by what would make a CUDA host wait: a torch
dispatch mode records every aten op with a data-dependent shape or a value read back (nonzero, boolean
indexing, .item(), unique, ...), and `Tensor.tolist` (which reads a CPU tensor without an aten op) is
refused, while a sharded MoE runs with the Triton kernels (interpreted). That covers the selection and
the kernels below it. Elsewhere the CPU references (which loop over the used experts on the host) stand
in for the kernels, so the static decoder's step on two ranks is checked at the Python level instead:
no `nonzero` anywhere in it, the call the earlier selection made.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from v4 import model
from v4.kernels.common import interpreting
from v4.model.config import HASH_MOE, MOE, V4Config
from v4.model.moe import ExpertShard, MoE
from v4.model.parallel import Parallel
from v4.model.quantized_linear import quantize_model
from v4.model.random_checkpoint import init_checkpoint
from v4.model.static_decode import StaticDecoder

WORLD = 2
# aten ops whose result shape depends on the data or whose value goes back to the host
SYNCING = frozenset({"aten::nonzero", "aten::_local_scalar_dense", "aten::masked_select", "aten::_unique2",
                     "aten::unique_dim", "aten::unique_consecutive", "aten::repeat_interleave"})


class HostSyncs(TorchDispatchMode):
    """Records the syncing aten ops (`SYNCING`, and indexing by a boolean mask) run under it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 (torch's hook)
        name = func._schema.name
        masks = name in ("aten::index", "aten::index_put", "aten::index_put_") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in args[1])
        if name in SYNCING or masks:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _config() -> V4Config:
    return V4Config(vocab_size=50, hidden_size=64, num_hidden_layers=2, n_routed_experts=8, num_experts_per_tok=3,
                    moe_intermediate_size=32, mlp_layer_types=[HASH_MOE, MOE])


def _whole_moe(dtype: torch.dtype) -> MoE:
    """The score-routed MoE of layer 1 with random weights, all 8 experts."""
    layer = MoE(_config(), 1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    return layer.to(dtype)


def _share(whole: MoE, rank: int, reduce: Callable[[torch.Tensor], torch.Tensor], fmt: str | None = None) -> MoE:
    """Rank `rank`'s MoE as shard_model leaves it (its experts, the shard in its strategy), its experts
    then quantised to `fmt` as a checkpoint's would be."""
    layer = copy.deepcopy(whole)
    lo, hi = Parallel(rank, WORLD).span(len(whole.experts))
    layer.experts._modules = OrderedDict((str(e), layer.experts._modules[str(e)]) for e in range(lo, hi))
    layer.strategy = replace(layer.strategy, shard=ExpertShard(lo, hi, reduce))
    if fmt is not None:
        holder = nn.Module()  # the checkpoint names quantize_model classifies by: layers.0.ffn.experts.E.w1
        holder.layers = nn.ModuleList([nn.Module()])
        holder.layers[0].ffn = layer
        quantize_model(holder, linears=None, experts=fmt)
    return layer


def _nonzero_selection(layer: MoE, flat: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """A rank's float32 share as the selection before issue 28 made it: its pairs found with nonzero (a
    host sync), run alone and put back in their slots, summed over slots."""
    shard = layer.strategy.shard
    weights, indices = layer.gate(flat, token_ids)
    num_tokens, k = indices.shape
    pairs = ((indices >= shard.start) & (indices < shard.end)).reshape(-1).nonzero().squeeze(1)
    out = torch.zeros(num_tokens * k, flat.shape[-1])
    ids = (indices.reshape(-1)[pairs] - shard.start)[:, None]
    out[pairs] = layer._routed(flat[pairs // k], weights.reshape(-1)[pairs, None], ids).float()
    return out.view(num_tokens, k, -1).sum(1)


def _inputs(tokens: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(tokens)
    return torch.randn(1, tokens, 64, generator=g).to(dtype), torch.randint(0, 50, (1, tokens), generator=g)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_ranks_shares_are_the_nonzero_selections_and_add_up_to_the_moe(dtype: torch.dtype, tol: float) -> None:
    """Each rank's share equals the earlier selection's bit for bit (the same pairs' rows, the same
    float32 sum; the references run each expert on the same rows); the two add up to the whole MoE
    (float32 sums in another order; in bf16 the whole MoE also rounds as it adds the slots)."""
    whole = _whole_moe(dtype)
    x, token_ids = _inputs(9, dtype)
    flat = x.reshape(-1, 64)
    shares: list[torch.Tensor] = []
    ranks = [_share(whole, rank, lambda t: shares.append(t) or t) for rank in range(WORLD)]
    for rank, layer in enumerate(ranks):
        layer(x, token_ids)
        assert torch.equal(shares[rank], _nonzero_selection(layer, flat, token_ids.reshape(-1)))
    routed = (shares[0] + shares[1]).to(dtype)
    ours, theirs = (routed + whole.shared_experts(flat)).view_as(x).float(), whole(x, token_ids).float()
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < tol
    assert ranks[1](x[:, :0], token_ids[:, :0]).shape == (1, 0, 64)  # no tokens: no rows, no error


@pytest.mark.skipif(not interpreting(), reason="needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
@pytest.mark.parametrize("fmt,tokens", [
    (None, 2),    # float experts: the grouped GEMM
    ("fp8", 2),   # 6 rows: the decode GEMV
    ("fp8", 5),   # 15 rows: the grouped GEMM
    ("fp4", 2),   # the grouped GEMM (the FP4 GEMV takes one row)
])
def test_a_sharded_moe_under_the_kernels_syncs_nothing(fmt: str | None, tokens: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 of 2 through the Triton kernels (router, expert kernels, shared expert): no syncing op
    from the selection down, and the references' result."""
    layer = _share(_whole_moe(torch.float32), 1, lambda t: t, fmt)
    x, token_ids = _inputs(tokens, torch.float32)
    monkeypatch.setenv("V4_KERNELS", "0")
    expected = layer(x, token_ids)
    monkeypatch.setenv("V4_KERNELS", "interpret")
    with monkeypatch.context() as patch, HostSyncs() as syncs:
        patch.setattr(torch.Tensor, "tolist", lambda t: syncs.seen.append("Tensor.tolist"))
        out = layer(x, token_ids)
    assert syncs.seen == []
    assert ((out - expected).norm() / expected.norm()).item() < 1e-5


def test_the_check_sees_the_selection_before_issue_28() -> None:
    layer = _share(_whole_moe(torch.float32), 0, lambda t: t)
    x, token_ids = _inputs(4, torch.float32)
    with HostSyncs() as syncs:
        _nonzero_selection(layer, x.reshape(-1, 64), token_ids.reshape(-1))
    assert "aten::nonzero" in syncs.seen


# --------------------------------------------------------------- the static decoder on two ranks (threads)


class _Exchange:
    """The collectives of ranks that are threads of this process: each puts its tensor in, all wait,
    each takes all of them (in rank order, so every rank sums alike)."""

    def __init__(self, world: int) -> None:
        self.barrier, self.slots = threading.Barrier(world, timeout=60), [None] * world

    def gather(self, rank: int, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.slots[rank] = tensor
        self.barrier.wait()
        parts = list(self.slots)
        self.barrier.wait()
        return parts


@dataclass(frozen=True)
class _ThreadRank(Parallel):
    """A Parallel whose group is an _Exchange: model/parallel.py's sharding with in-process collectives."""

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        parts = self.group.gather(self.rank, tensor.contiguous())
        return torch.stack(parts).sum(0)

    def all_gather_last(self, tensor: torch.Tensor, total: int) -> torch.Tensor:
        return torch.cat(self.group.gather(self.rank, tensor), dim=-1)[..., :total]


def _decode(engine: model.Engine, prompt: list[int], follow: list[int]) -> list[torch.Tensor]:
    """The static decoder's logits for `follow`, one step each, after `prompt` prefilled eagerly."""
    state = engine.new_state(64)
    engine.forward(prompt, state)
    decoder = StaticDecoder(engine.model, batch=1, capacity=64)
    assert not decoder.use_graph  # CPU; and under parallel its default until a multi-GPU run
    decoder.load_row(0, state)
    return [decoder.step([token]) for token in follow]


def test_static_decoder_steps_on_two_ranks_run_no_nonzero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two ranks (threads sharing an _Exchange) decode with the static decoder, `torch.nonzero` and
    `Tensor.nonzero` raising throughout: their logits are those of one process."""
    path = init_checkpoint(tmp_path / "ckpt", "tiny", seed=4)
    prompt, follow = list(range(7, 20)), [21, 5, 300]
    single = _decode(model.load(path, device="cpu", dtype="float32", parallel=False), prompt, follow)
    exchange = _Exchange(WORLD)
    engines = [model.load(path, device="cpu", dtype="float32", parallel=_ThreadRank(rank, WORLD, group=exchange))
               for rank in range(WORLD)]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("nonzero (a host sync) in a decode step")

    monkeypatch.setattr(torch, "nonzero", refuse)
    monkeypatch.setattr(torch.Tensor, "nonzero", refuse)
    results: list[object] = [None] * WORLD

    def run(rank: int) -> None:
        try:
            results[rank] = _decode(engines[rank], prompt, follow)
        except BaseException as error:  # noqa: BLE001 (reported below)
            results[rank] = error
            exchange.barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(WORLD)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not [error for error in results if isinstance(error, BaseException)], results
    for logits in results:
        for ours, theirs in zip(logits, single):
            assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-5
