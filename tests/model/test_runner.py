"""The engine runner on a tiny random checkpoint (CPU): prompts that share a prefix rewind to it, answers
on the static decoder (the CUDA-graphed path on a GPU; eager on the CPU, same code otherwise) equal
token-by-token eager decoding and leave the state as it leaves it, and a stepped prefill stops where
it is asked to and resumes from there."""

from __future__ import annotations

import pytest
import torch

from v4.model.engine import Engine
from v4.model.runner import Runner, RunnerError, _warm_stops
from tests.conftest import tiny_chat_checkpoint


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    from v4 import model

    return model.load(tiny_chat_checkpoint(tmp_path_factory.mktemp("runner"), seed=4), device="cpu")


def _ids(engine: Engine, text: str) -> list[int]:
    return engine.tokenizer.encode(text, add_special_tokens=False).ids


def _turns(runner: Runner) -> list[tuple[str, int, int]]:
    prompt = _ids(runner.engine, "You edit code.\nRename f to g in a.py\n")
    out = []
    for question in ("and b.py too\n", "now explain\n"):
        text = "".join(runner.generate(prompt, max_tokens=24))
        answer = runner.last_answer
        out.append((text, answer.cached_tokens, answer.completion_tokens))
        prompt = prompt + _ids(runner.engine, text) + _ids(runner.engine, question)
    return out


def test_static_answers_equal_eager_answers(engine: Engine) -> None:
    assert engine.has_draft_head  # the state carries MTP layers, which static decoding leaves behind
    eager, static = Runner(engine, 4096, static_decode=False), Runner(engine, 4096, static_decode=True)
    turns = _turns(static)
    assert turns == _turns(eager)
    assert all(completion > 1 for _, _, completion in turns) and turns[1][1] > 0  # decoded; prefix reused
    assert static._decoder is None  # written back into the state after each answer
    assert static.state.num_tokens == eager.state.num_tokens
    window, held = engine.model.config.sliding_window, static.state.num_tokens
    for a, b in zip(static.state.layers, eager.state.layers):
        assert torch.allclose(a.window_rows(held, window), b.window_rows(held, window), atol=1e-5)


def test_an_abandoned_answer_is_written_back_before_the_next_prompt(engine: Engine) -> None:
    runner = Runner(engine, 4096, static_decode=True)
    prompt = _ids(engine, "You edit code.\nhello\n")
    stream = runner.generate(prompt, max_tokens=24)
    next(stream)
    assert runner._decoder is not None
    again = "".join(Runner(engine, 4096, static_decode=False).generate(prompt, max_tokens=24))
    assert "".join(runner.generate(prompt, max_tokens=24)) == again  # the first stream is never closed


def test_a_prompt_that_extends_the_last_rewinds_to_it(engine: Engine) -> None:
    runner = Runner(engine, 4096)
    first = _ids(engine, "def add(a, b):\n    return a + b\n")
    logits, stats = runner.prefill(first)
    assert (stats.tokens, stats.reused_tokens, stats.computed_tokens, stats.from_store) == (len(first), 0, len(first),
                                                                                           False)
    assert runner.held_ids == first and runner.last_prefill is None  # no store: no store prefill to report
    "".join(runner.generate(first + _ids(engine, "print(add(1, 2))\n"), max_tokens=4))
    assert runner.last_answer.cached_tokens == len(first) and runner.last_answer.completion_tokens > 0
    again, stats = runner.prefill(first)  # the answer's tokens are rewound away
    assert stats.reused_tokens == len(first) and torch.equal(again, logits)


def test_prompts_the_context_cannot_hold_are_refused(engine: Engine) -> None:
    runner = Runner(engine, 64)
    with pytest.raises(RunnerError, match="the prompt is empty"):
        runner.room_after([])
    with pytest.raises(RunnerError, match="the prompt is 64 tokens; the context holds 64"):
        next(runner.generate([1] * 64, max_tokens=4))
    assert runner.room_after([1] * 60) == 4


def test_a_stepped_prefill_stops_when_asked_and_resumes_from_there(engine: Engine) -> None:
    ids = _ids(engine, "".join(f"def f{n}(x):\n    return x * {n}\n\n" for n in range(40)))
    runner = Runner(engine, 4096)
    asked = {"n": 0}

    def after_two_steps() -> bool:
        asked["n"] += 1
        return asked["n"] > 2

    stopped = runner.warm(ids, [], after_two_steps, step_tokens=64)
    assert stopped.cancelled and stopped.held_tokens == stopped.computed_tokens == 128 == len(runner.held_ids)
    done = runner.warm(ids, [], step_tokens=64)
    assert not done.cancelled and (done.reused_tokens, done.held_tokens) == (128, len(ids))
    assert done.computed_tokens == len(ids) - 128
    _, cold = Runner(engine, 4096).prefill(ids)
    again = runner.warm(ids, [], step_tokens=64)  # nothing left to do
    assert (again.reused_tokens, again.computed_tokens) == (len(ids), 0) and cold.computed_tokens == len(ids)


def test_warm_stops_fall_on_boundaries_and_on_the_grid_in_long_stretches() -> None:
    assert _warm_stops([100, 250], 0, 600, step=96, grid=128) == [100, 250, 384, 600]
    assert _warm_stops([100, 250], 120, 600, step=96, grid=128) == [250, 384, 600]  # after what is held
    assert _warm_stops([], 600, 600, step=96, grid=128) == [600]  # all held: one step that rewinds
