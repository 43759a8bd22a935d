"""One decode-state layout (state.py): a decoder over a state steps that state's own tensors, with no
copy in or out, interleaves with the eager path token by token, grows the state in place, and leaves
marks, rewinds and copies between states of other capacities exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from v4 import model
from v4.model import static_decode
from v4.model.state import copy_rows, mark, rewind
from v4.model.static_decode import StaticDecodeError, StaticDecoder


@pytest.fixture(scope="module")
def engine(tiny_mtp_checkpoint: Path) -> model.Engine:
    """A tiny model with an MTP block: window 8, CSA rate 4, HCA rate 8."""
    return model.load(tiny_mtp_checkpoint, device="cpu", dtype="float32")


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> bool:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-5


@pytest.fixture()
def no_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any copy of rows between states inside the decoder."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a decoder over its own state copied rows")
    monkeypatch.setattr(static_decode, "copy_rows", refuse)


def test_a_decoder_over_a_state_steps_its_tensors_and_interleaves_with_eager_feeding(engine, no_copies) -> None:
    prompt, answer = _ids(13, 1), _ids(22, 2)  # the answer closes windows at every rate (4, 8)
    shared, eager = engine.new_state(128, draft=False), engine.new_state(128, draft=False)
    engine.prefill(prompt, shared)
    engine.prefill(prompt, eager)
    decoder = engine.state_decoder(shared, 64)
    assert decoder.state is shared and engine.state_decoder(shared, 64) is decoder  # kept with the state
    assert all(a.kv.data_ptr() == b.kv.data_ptr() for a, b in zip(decoder.layers, shared.layers))
    for turn in range(2):  # decode on the decoder, then feed eagerly on the same state, twice
        decoder.load_row(0, shared)
        for token in answer[turn * 11 : turn * 11 + 6]:
            assert _close(decoder.step([token])[0], engine.forward([token], eager)[-1])
        decoder.store_row(0, shared)
        assert shared.num_tokens == eager.num_tokens
        fed = answer[turn * 11 + 6 : (turn + 1) * 11]
        assert _close(engine.forward(fed, shared), engine.forward(fed, eager))


def test_a_draft_decoder_over_a_state_verifies_in_place_and_leaves_the_eager_convention(engine, no_copies) -> None:
    prompt = _ids(11, 10)
    expected = list(engine.generate(prompt, 16, static=False))  # plain eager greedy decoding
    state = engine.new_state(128, draft=True)
    token = int(engine.prefill(prompt, state).argmax())
    decoder = engine.state_decoder(state, 64, draft=True)
    out, pair = [token], (token, decoder.start(0, state, token))
    while len(out) < 16:
        verified = decoder.verify([pair])[0]
        out += verified.ids
        pair = verified.next_pair
    decoder.store_row(0, state)
    assert out[:16] == expected[:16]
    fresh = engine.new_state(128, draft=True)
    engine.prefill(prompt + out[:-1], fresh)  # the state holds every settled id but the last
    assert state.num_tokens == fresh.num_tokens
    assert _close(engine.draft(state, out[-1]), engine.draft(fresh, out[-1]))  # the MTP layer and its pending streams
    assert _close(engine.forward(out[-1:], state), engine.forward(out[-1:], fresh))


def test_a_decoder_grows_the_state_it_steps_in_place(engine, no_copies) -> None:
    prompt, answer = _ids(9, 3), _ids(30, 4)
    # 12 tokens: not a multiple of the HCA rate, so the open window's entry needs its own slot
    small, large = engine.new_state(12, draft=False), engine.new_state(128, draft=False)
    engine.prefill(prompt, small)
    engine.prefill(prompt, large)
    layers = small.layers  # the same list object, its layers replaced
    decoder = StaticDecoder(engine.model, 1, 12, state=small, page_tokens=16)
    decoder.load_row(0, small)
    for token in answer:
        assert _close(decoder.step([token])[0], engine.forward([token], large)[-1])
    decoder.store_row(0, small)
    assert small.max_tokens == 48 and small.layers is layers and small.num_tokens == 39
    assert _close(engine.forward([5], small), engine.forward([5], large))


def test_rows_copied_between_states_of_other_capacities_continue_exactly(engine) -> None:
    prompt = _ids(27, 5)  # windows closed and one open at every rate
    source, target, reference = (engine.new_state(size, draft=True) for size in (32, 200, 200))
    engine.prefill(prompt, source)
    engine.prefill(prompt, reference)
    copy_rows(source, 0, target, 0, source.num_tokens, source.mtp_tokens)
    target.num_tokens, target.mtp_pending = source.num_tokens, source.mtp_pending
    probe = _ids(12, 6)
    assert _close(engine.forward(probe, target), engine.forward(probe, reference))
    assert _close(engine.draft(target, 3), engine.draft(reference, 3))  # the MTP layer came along
    with pytest.raises(ValueError, match="do not fit"):
        copy_rows(target, 0, source, 0, 40, 39)


def test_a_rewind_after_static_decoding_restores_the_prompts_state(engine) -> None:
    prompt = _ids(14, 7)
    state, fresh = engine.new_state(128, draft=False), engine.new_state(128, draft=False)
    engine.prefill(prompt, state)
    engine.prefill(prompt, fresh)
    at_prompt = mark(state)
    decoder = engine.state_decoder(state, 64)
    decoder.load_row(0, state)
    for token in _ids(21, 8):  # past the window (8) and several windows of both rates
        decoder.step([token])
    decoder.store_row(0, state)
    rewind(state, at_prompt)
    probe = _ids(9, 9)
    assert state.num_tokens == 14
    assert _close(engine.forward(probe, state), engine.forward(probe, fresh))


def test_a_decoder_over_a_state_refuses_a_batched_state(engine) -> None:
    with pytest.raises(StaticDecodeError, match="single-sequence"):
        StaticDecoder(engine.model, 1, 16, state=model.DecodeState([], 16, engine.id, batch=2))
