"""The engine API: chunked prefill and token-by-token decoding equal one full forward and transformers."""

from __future__ import annotations

import pytest
import torch

from v4 import model
from v4.model import EngineInputError
from v4.model.config import ConfigError

CHUNKS = [37, 1, 1, 90, 1]  # 130 tokens: several sliding, CSA and HCA windows, and the top-k limit


@pytest.fixture(scope="module")
def engine(hf_checkpoint) -> model.Engine:
    path, _ = hf_checkpoint
    return model.load(path, device="cpu", dtype="float32")


def _ids(n: int, seed: int = 5) -> list[int]:
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def test_chunked_prefill_matches_one_forward_and_transformers(engine, hf_checkpoint) -> None:
    _, reference = hf_checkpoint
    ids = _ids(sum(CHUNKS))
    whole = engine.forward(ids, engine.new_state())
    state = engine.new_state()
    parts, at = [], 0
    for size in CHUNKS:
        parts.append(engine.forward(ids[at : at + size], state))
        at += size
    chunked = torch.cat(parts)
    with torch.no_grad():
        expected = reference(torch.tensor([ids]), use_cache=False).logits[0].float()
    assert state.num_tokens == len(ids)
    assert _relative_error(chunked, whole) < 1e-5
    assert _relative_error(chunked, expected) < 1e-4


def test_prefill_in_chunks_gives_the_last_logits_of_one_forward(engine) -> None:
    ids = _ids(130, seed=8)
    whole = engine.forward(ids, engine.new_state())
    last = engine.forward(ids, engine.new_state(), last_only=True)
    assert last.shape == (1, whole.shape[-1])
    assert _relative_error(last[0], whole[-1]) < 1e-6
    state = engine.new_state(200)
    logits = engine.prefill(ids, state, chunk_tokens=29)  # 5 chunks, the last one short
    assert state.num_tokens == 130 and logits.shape == whole[-1].shape
    assert _relative_error(logits, whole[-1]) < 1e-5
    with pytest.raises(EngineInputError, match="200 tokens; 130 are used and 71 more"):
        engine.prefill(_ids(71), state)
    assert state.num_tokens == 130  # refused before any chunk was fed
    with pytest.raises(EngineInputError, match="no token ids"):
        engine.prefill([], state)


def test_token_by_token_decoding_matches_one_forward(engine) -> None:
    ids = _ids(70, seed=6)
    whole = engine.forward(ids, engine.new_state())
    state = engine.new_state()
    steps = [engine.forward(ids[:20], state)] + [engine.forward([token], state) for token in ids[20:]]
    assert _relative_error(torch.cat(steps), whole) < 1e-5


def test_greedy_generation_equals_argmax_of_full_forwards_and_transformers(engine, hf_checkpoint) -> None:
    _, reference = hf_checkpoint
    prompt = _ids(30, seed=7)
    generated = list(engine.generate(prompt, max_new_tokens=12))
    sequence = list(prompt)
    for _ in range(12):
        sequence.append(int(engine.forward(sequence, engine.new_state())[-1].argmax()))
    assert generated == sequence[30:]
    with torch.no_grad():
        theirs = reference.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                    eos_token_id=-1, pad_token_id=0)[0, 30:].tolist()  # no early stop
    assert generated == theirs


def test_generation_stops_after_a_stop_token(engine) -> None:
    prompt = _ids(10, seed=8)
    first = next(iter(engine.generate(prompt, max_new_tokens=5)))
    assert list(engine.generate(prompt, max_new_tokens=5, stop=[first])) == [first]


def test_sampling_is_reproducible_with_a_seed(engine) -> None:
    prompt = _ids(10, seed=9)
    a = list(engine.generate(prompt, 8, temperature=0.8, top_p=0.9, seed=1))
    b = list(engine.generate(prompt, 8, temperature=0.8, top_p=0.9, seed=1))
    assert a == b and len(a) == 8


def test_bad_input_is_a_clear_error(engine, hf_checkpoint) -> None:
    path, _ = hf_checkpoint
    with pytest.raises(EngineInputError, match=r"token ids must be in \[0, 97\)"):
        engine.forward([5, 97], engine.new_state())
    with pytest.raises(EngineInputError, match="no token ids"):
        engine.forward([], engine.new_state())
    other = model.load(path, device="cpu", dtype="float32")
    with pytest.raises(EngineInputError, match="another engine"):
        engine.forward([1], other.new_state())
    small = engine.new_state(max_tokens=16)
    engine.forward(_ids(16), small)
    with pytest.raises(EngineInputError, match="the state holds 16 tokens"):
        engine.forward([1], small)


# --- issue 24: CPU threads are chosen, not torch's default of every core ----------------------------

@pytest.mark.parametrize("cores, load, expected", [(16, 0.2, 8), (16, 15.7, 1), (16, 10.0, 6), (2, 0.0, 1),
                                                   (1, 3.0, 1)])
def test_cpu_threads_follow_the_idle_cores(monkeypatch: pytest.MonkeyPatch, cores: int, load: float,
                                           expected: int) -> None:
    import os

    from v4.model.engine import default_cpu_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert default_cpu_threads() == expected


def test_a_cpu_engine_runs_on_the_threads_it_was_given(hf_checkpoint) -> None:
    path, _ = hf_checkpoint
    before = torch.get_num_threads()
    try:
        model.load(path, device="cpu", cpu_threads=1)
        assert torch.get_num_threads() == 1
        with pytest.raises(ConfigError, match="cpu_threads"):
            model.load(path, device="cpu", cpu_threads=0)
    finally:
        torch.set_num_threads(before)
