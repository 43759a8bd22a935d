"""The MTP block as a draft head: its drafts equal a whole-sequence computation, and speculative
greedy decoding yields exactly the ids plain greedy decoding yields, with the state rewound on rejects."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from v4 import model
from v4.model import EngineInputError
from v4.model.state import mark, new_decode_state, rewind


@pytest.fixture(scope="module")
def engine(tiny_mtp_checkpoint: Path) -> model.Engine:
    return model.load(tiny_mtp_checkpoint, device="cpu", dtype="float32")


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 32000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_checkpoint_with_mtp_tensors_gets_a_draft_head(engine: model.Engine) -> None:
    assert engine.has_draft_head and len(engine.model.mtp) == 1
    assert engine.model.mtp[0].attn.layer_type == "sliding_attention"  # V4's MTP layer: compress ratio 0


def test_drafts_equal_the_mtp_block_run_over_the_whole_sequence(engine: model.Engine) -> None:
    ids = _ids(40, seed=1)
    tensor = torch.tensor([ids])
    with torch.no_grad():  # reference: main model once, then the MTP block once over all positions
        _, streams = engine.model(tensor, return_streams=True)
        block = engine.model.mtp[0]
        whole_state = new_decode_state(engine.model.config, 64, "ref", torch.float32, "cpu", mtp_layers=1)
        out = block(streams[:, :-1], tensor[:, 1:], 0, whole_state.mtp_layers[0], engine.model.embed)
        expected = block.logits(out, engine.model.head)[0]  # row t: the token after ids[t + 1]
    state = engine.new_state()
    at = 0
    for size in (13, 1, 1, 9, 6):  # chunked; a draft after every chunk
        engine.forward(ids[at : at + size], state)
        at += size
        drafted = engine.draft(state, ids[at])
        error = ((drafted - expected[at - 1]).abs().max() / expected[at - 1].abs().max()).item()
        assert error < 1e-5
    assert state.num_tokens == at  # drafting fed nothing


def test_mark_and_rewind_undo_tokens_exactly(engine: model.Engine) -> None:
    ids = _ids(30, seed=2)
    state = engine.new_state()
    engine.forward(ids[:21], state)  # mid-window in every layer type
    point = mark(state)
    first = engine.forward(ids[21:], state)
    engine.forward(_ids(5, seed=3), state)  # wander off
    rewind(state, point)
    rewind(state, point)  # a mark can be returned to again
    engine.forward(ids[21:25], state)
    rewind(state, point)
    again = engine.forward(ids[21:], state)
    assert torch.equal(first, again)


def test_speculative_greedy_yields_the_plain_greedy_ids(engine: model.Engine) -> None:
    prompt = _ids(25, seed=5)
    plain_state, spec_state = engine.new_state(), engine.new_state()
    plain = list(engine.generate(prompt, 12, state=plain_state))
    speculative = list(engine.generate(prompt, 12, state=spec_state, speculative=True))
    assert speculative == plain
    assert engine.draft_stats.drafted > 0
    assert spec_state.num_tokens == plain_state.num_tokens == len(prompt) + 11


def test_accepted_and_rejected_drafts_both_keep_the_ids_and_the_state(engine: model.Engine, monkeypatch) -> None:
    prompt = _ids(20, seed=6)
    plain = list(engine.generate(prompt, 14))
    real_draft = engine.draft
    calls = {"n": 0}

    def oracle(state, token):  # right on even calls (accepted), the real MTP otherwise (rejected)
        calls["n"] += 1
        logits = real_draft(state, token)
        if calls["n"] % 2 == 0:
            generated = state.num_tokens - len(prompt) + 1  # index of the id after `token`
            if generated < len(plain):
                logits = torch.zeros_like(logits)
                logits[plain[generated]] = 1.0
        return logits

    monkeypatch.setattr(engine, "draft", oracle)
    state = engine.new_state()
    assert list(engine.generate(prompt, 14, state=state, speculative=True)) == plain
    assert engine.draft_stats.accepted >= 2 and engine.draft_stats.accepted < engine.draft_stats.drafted
    # the state holds the prompt and every yielded id but the last, as plain decoding leaves it
    expected_next = engine.forward([plain[-1]], state)
    reference = engine.new_state()
    whole = engine.forward(prompt + plain, reference)[-1:]
    assert ((expected_next - whole).abs().max() / whole.abs().max()).item() < 1e-5


def test_draft_errors_are_clear(engine: model.Engine, hf_checkpoint) -> None:
    with pytest.raises(EngineInputError, match="feed tokens"):
        engine.draft(engine.new_state(), 5)
    state = engine.new_state()
    engine.forward([1, 2, 3], state)
    with pytest.raises(EngineInputError, match="out of range"):
        engine.draft(state, 10**9)
    with pytest.raises(EngineInputError, match="top_p must be in"):
        list(engine.generate([1, 2], 3, temperature=0.7, top_p=0.0, speculative=True))
    without = model.load(hf_checkpoint[0], device="cpu", dtype="float32")  # transformers' saves drop mtp.*
    assert not without.has_draft_head
    with pytest.raises(EngineInputError, match="no MTP block"):
        without.draft(without.new_state(), 1)
