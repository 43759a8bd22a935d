"""Speculative sampling on a tiny random model (8-token vocabulary, so joint distributions are small
tables): the graphed verify step's ids follow plain sampling's distribution, computed exactly from the
model's logits, within a chi-square bound that the drafts themselves (what always accepting them would
yield) fail by far; the eager and graphed paths yield the same ids for a seed; a seeded run repeats;
the state afterwards is the one plain decoding of those ids leaves; greedy stays plain greedy."""

from __future__ import annotations

import pytest
import torch

from v4 import model
from v4.model.random_checkpoint import init_checkpoint
from v4.model.sampling import FIRST_STREAM, Sampling, processed
from v4.model.static_verify import DraftDecoder

from .test_sampling import grouped_chi_square
from .test_static_verify import _same_state

VOCAB = 8
PROMPT = [4, 7, 6, 4, 0, 2]
# Temperature 0.2 keeps p and the MTP block's q apart (about half the drafts held), top-p 0.95 cuts a tail
SETTINGS = {"temperature": 0.2, "top_p": 0.95}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> model.Engine:
    path = init_checkpoint(tmp_path_factory.mktemp("sampling") / "tiny", "tiny", seed=4,
                           overrides={"vocab_size": VOCAB})
    return model.load(path, device="cpu", dtype="float32")


def _exact(engine: model.Engine) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain sampling's p(t1) `[V]`, p(t2 | t1) `[V, V]` and p(t3 | t1, t2) `[V, V, V]` after PROMPT,
    from one forward over every continuation."""
    sequences = torch.tensor([PROMPT + [a, b] for a in range(VOCAB) for b in range(VOCAB)])
    with torch.no_grad():
        probs = processed(engine.model(sequences), **SETTINGS)
    return probs[0, -3], probs[::VOCAB, -2], probs[:, -1].view(VOCAB, VOCAB, VOCAB)


def _counts(*ids: torch.Tensor) -> torch.Tensor:
    """How often each tuple of ids occurs: `[V] * len(ids)` counts."""
    flat = torch.zeros(VOCAB ** len(ids), dtype=torch.long)
    index = sum(column * VOCAB ** (len(ids) - 1 - k) for k, column in enumerate(ids))
    return flat.index_add_(0, index, torch.ones_like(index)).view(*[VOCAB] * len(ids))


def test_graphed_speculative_sampling_draws_what_plain_sampling_draws(engine) -> None:
    """4096 sequences, 2048 rows of the draft decoder at a time (the prompt's state loaded in each): the
    first id drawn as plain sampling draws it, the MTP block's first draft, two verify steps. The ids
    t1, t2 follow p(t1) p(t2 | t1), and t3 follows p(t3 | t1, t2): the bonus id where the first draft
    held, else the second step's, settled by the rule with the q kept from the first step."""
    rows, rounds = 2048, 2
    sampling = Sampling(**SETTINGS, seed=11)
    decoder = DraftDecoder(engine.model, batch=rows, capacity=len(PROMPT) + 4, page_tokens=64)
    decoder.set_sampling(sampling)
    state = engine.new_state(64)
    first_probs = processed(engine.prefill(PROMPT, state), **SETTINGS)
    plain = sampling.generator("cpu", FIRST_STREAM)
    sequences, drafts, held = [], [], []
    for _ in range(rounds):
        first = torch.multinomial(first_probs, rows, replacement=True, generator=plain).tolist()
        for row in range(rows):
            decoder.load_row(row, state)
        draft = decoder.first_drafts(list(range(rows)), first)
        verified = decoder.verify(list(zip(first, draft)))
        again = decoder.verify([v.next_pair for v in verified])
        sequences += [(t, *v.ids, *w.ids)[:3] for t, v, w in zip(first, verified, again)]
        drafts += draft
        held += [v.accepted for v in verified]
    t1, t2, t3 = torch.tensor(sequences).unbind(1)
    d, accepted = torch.tensor(drafts), torch.tensor(held)
    p1, p2, p3 = _exact(engine)
    assert torch.equal(t2[accepted], d[accepted])
    assert 0.3 < accepted.float().mean() < 0.7  # both branches of the rule ran often

    joint = (p1[:, None] * p2).flatten()[None]
    statistic, bound = grouped_chi_square(_counts(t1, t2).flatten()[None], joint)
    assert statistic < bound, (statistic, bound)
    wrong, _ = grouped_chi_square(_counts(t1, d).flatten()[None], joint)  # the drafts: always accepting
    assert wrong > 10 * bound, (wrong, bound)
    statistic, bound = grouped_chi_square(_counts(t1, t2, t3).view(-1, VOCAB), p3.reshape(-1, VOCAB))
    assert statistic < bound, (statistic, bound)


@pytest.mark.parametrize("top_p", [1.0, 0.95])
def test_eager_and_graphed_paths_yield_the_same_ids_for_a_seed(engine, top_p: float) -> None:
    """The same noise, drawn from the same streams in the same order: the same ids, drafts and
    acceptances (the two paths' logits differ by float32 ulps, which moves no draw here); each state is
    left as plain decoding of those ids leaves it, its MTP layer made from the settled tokens."""
    settings = {"temperature": SETTINGS["temperature"], "top_p": top_p}
    for seed in (1, 2):
        eager_state, static_state = engine.new_state(64), engine.new_state(64)
        eager = list(engine.generate(PROMPT, 16, **settings, seed=seed, speculative=True, static=False,
                                     state=eager_state))
        eager_stats = engine.draft_stats
        static = list(engine.generate(PROMPT, 16, **settings, seed=seed, speculative=True, static=True,
                                      state=static_state))
        assert static == eager
        assert engine.draft_stats == eager_stats and 0 < eager_stats.accepted < eager_stats.drafted
        reference = engine.new_state(64)
        engine.forward(PROMPT + eager[:-1], reference)
        _same_state(engine, static_state, reference, eager[-1])
        reference = engine.new_state(64)
        engine.forward(PROMPT + eager[:-1], reference)
        _same_state(engine, eager_state, reference, eager[-1])


def test_a_seeded_run_repeats_and_greedy_stays_plain_greedy(engine) -> None:
    """Runs with one seed repeat (the first id is plain sampling's own); other seeds give other ids;
    the engine's draft decoder, having sampled, decodes greedily again at temperature 0."""
    runs = [list(engine.generate(PROMPT, 12, **SETTINGS, seed=seed, speculative=True, static=True))
            for seed in (5, 5, 6, 7)]
    assert runs[0] == runs[1] and len({tuple(r) for r in runs}) == 3
    assert runs[0][0] == next(engine.generate(PROMPT, 1, **SETTINGS, seed=5))
    greedy = list(engine.generate(PROMPT, 12, static=False))
    assert list(engine.generate(PROMPT, 12, speculative=True, static=True)) == greedy
    assert list(engine.generate(PROMPT, 12, speculative=True, static=False)) == greedy
