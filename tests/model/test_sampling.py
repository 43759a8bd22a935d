"""The rejection rule of speculative sampling (model/sampling.py) on its own: for drafts drawn from any q,
the id it settles is distributed as p, computed exactly over a grid of uniforms and checked by a
seeded Monte-Carlo run against a chi-square bound that a wrong rule fails; and `processed` is the
distribution plain `sample` draws from, batched and with its settings as tensors."""

from __future__ import annotations

import pytest
import torch

from v4.model.sampling import Sampling, StepNoise, accept_or_resample, draw, processed, residual, sample

ALPHA = 1e-4  # a chi-square statistic beyond its (1 - ALPHA) quantile fails the test

# (p, q) over 5 tokens: unlike, q wider than p, p wider than q, disjoint supports, equal, a zero in p
PAIRS = [
    ([0.5, 0.2, 0.15, 0.1, 0.05], [0.1, 0.1, 0.2, 0.3, 0.3]),
    ([0.7, 0.3, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]),
    ([0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 0.9, 0.1, 0.0, 0.0]),
    ([0.6, 0.4, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.25, 0.25]),
    ([0.3, 0.3, 0.1, 0.1, 0.2], [0.3, 0.3, 0.1, 0.1, 0.2]),
    ([0.0, 0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.1, 0.1, 0.1]),
]


def grouped_chi_square(observed: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """Pearson's statistic over groups of counts `[G, K]`, each group against its own distribution `probs`
    `[G, K]`, and the statistic's (1 - ALPHA) quantile; cells expecting fewer than 5 are pooled into one."""
    from scipy.stats import chi2

    expected = observed.sum(-1, keepdim=True).double() * probs.double()
    statistic, cells, groups = 0.0, 0, 0
    pooled_o = pooled_e = 0.0
    for o, e in zip(observed.double(), expected):
        if o.sum() == 0:
            continue
        small = e < 5
        statistic += float(((o[~small] - e[~small]) ** 2 / e[~small]).sum())
        cells, groups = cells + int((~small).sum()), groups + 1
        pooled_o, pooled_e = pooled_o + float(o[small].sum()), pooled_e + float(e[small].sum())
    if pooled_e > 0:
        statistic, cells = statistic + (pooled_o - pooled_e) ** 2 / pooled_e, cells + 1
    return statistic, float(chi2.ppf(1 - ALPHA, max(cells - groups, 1)))


@pytest.mark.parametrize("pair", range(len(PAIRS)))
def test_the_settled_id_is_distributed_as_p_exactly(pair: int) -> None:
    """Every draft d weighted by q(d); its acceptance integrated over a grid of 2^20 uniforms (error
    at most 2^-21), a rejection replaced from the residual (the exponential race draws index i with
    probability w_i / sum(w) exactly): the output distribution is p to 1e-6."""
    p, q = (torch.tensor(v, dtype=torch.float64) for v in PAIRS[pair])
    grid = 1 << 20
    uniform = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    left = residual(p[None], q[None])[0]
    out = torch.zeros(5, dtype=torch.float64)
    for d in range(5):
        if q[d] == 0:
            continue
        accepted, settled = accept_or_resample(p.expand(grid, 5), q.expand(grid, 5), torch.full((grid,), d),
                                               uniform, torch.ones(grid, 5, dtype=torch.float64))
        assert torch.equal(settled[accepted], torch.full_like(settled[accepted], d))
        rate = accepted.double().mean()
        out += q[d] * (rate * torch.nn.functional.one_hot(torch.tensor(d), 5) + (1 - rate) * left / left.sum())
    assert (out - p).abs().max().item() < 1e-6


def test_monte_carlo_draws_follow_p_and_always_accepting_does_not() -> None:
    """200k rows (each pair a group), the draft drawn from q and settled by the rule with seeded noise:
    the ids follow p within a chi-square bound, the acceptance rate is sum(min(p, q)); the drafts
    themselves (what always accepting would yield) are far outside the bound."""
    generator = torch.Generator().manual_seed(0)
    rows = 200_000 // len(PAIRS)
    p = torch.tensor(PAIRS).select(1, 0).repeat_interleave(rows, dim=0)
    q = torch.tensor(PAIRS).select(1, 1).repeat_interleave(rows, dim=0)
    noise = StepNoise.empty(p.shape[0], 5, "cpu")
    noise.draw(generator)
    drafts = draw(q, noise.draft)
    accepted, settled = accept_or_resample(p, q, drafts, noise.uniform, noise.target)
    counts = torch.nn.functional.one_hot(settled.view(len(PAIRS), rows), 5).sum(1)
    statistic, bound = grouped_chi_square(counts, torch.tensor(PAIRS)[:, 0])
    assert statistic < bound, (statistic, bound)
    drafted = torch.nn.functional.one_hot(drafts.view(len(PAIRS), rows), 5).sum(1)
    wrong, _ = grouped_chi_square(drafted, torch.tensor(PAIRS)[:, 0])
    assert wrong > 100 * bound
    rates = accepted.view(len(PAIRS), rows).double().mean(1)
    expected = torch.minimum(torch.tensor(PAIRS)[:, 0], torch.tensor(PAIRS)[:, 1]).sum(1).double()
    assert ((rates - expected).abs() < 5 * (expected * (1 - expected) / rows).sqrt() + 1e-12).all()


def test_equal_distributions_always_accept_and_the_residual_stays_drawable() -> None:
    p = torch.tensor([[0.25, 0.25, 0.5, 0.0]])
    assert torch.equal(residual(p, p), p)  # p - q is all zero: p stands in
    uniform = torch.tensor([1 - 2**-24])
    accepted, settled = accept_or_resample(p, p, torch.tensor([2]), uniform, torch.ones(1, 4))
    assert accepted.item() and settled.item() == 2


def test_draw_never_picks_a_zero_weight_even_with_zero_noise() -> None:
    weights = torch.tensor([[0.0, 0.3, 0.0, 0.7]])
    noise = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert draw(weights, noise).item() == 3


@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.3, 1e-6])
def test_processed_is_what_sample_draws_from_batched_and_as_tensors(top_p: float) -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    probs = processed(logits, 0.7, top_p)
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    for row in range(3):
        full = torch.softmax(logits[row] / 0.7, -1)
        order = full.argsort(descending=True)
        mass = full[order].cumsum(0)
        kept = order[: int((mass < top_p).sum()) + 1] if top_p < 1 else order  # the smallest prefix reaching top_p
        expected = torch.zeros(50).index_put_((kept,), full[kept])
        assert torch.allclose(probs[row], expected / expected.sum(), atol=1e-7)
        assert torch.equal(processed(logits[row], 0.7, top_p), probs[row])
    as_tensors = processed(logits, torch.tensor(0.7), torch.tensor(top_p))
    assert torch.allclose(as_tensors, probs, atol=1e-7)
    drawn = {sample(logits[0], 0.7, top_p, torch.Generator().manual_seed(s)) for s in range(40)}
    assert all(probs[0, token] > 0 for token in drawn)


def test_bad_settings_are_refused_and_streams_differ() -> None:
    with pytest.raises(ValueError, match="temperature > 0"):
        Sampling(0.0)
    with pytest.raises(ValueError, match="top_p"):
        Sampling(1.0, top_p=1.5)
    settings = Sampling(0.8, seed=2**64 - 1)
    first, steps = (settings.generator("cpu", stream) for stream in (0, 1))
    assert first.initial_seed() == 2**64 - 1 and first.initial_seed() != steps.initial_seed()
