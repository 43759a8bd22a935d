"""The batch scheduler on a tiny random checkpoint (CPU): requests submitted together decode in shared
steps and each gets the text and counts it gets alone from `Runner.generate`; a cancelled request
frees its row; closing fails what is left."""

from __future__ import annotations

import pytest

from v4.model.engine import Engine
from v4.model.runner import Runner, RunnerError
from v4.model.scheduler import Scheduler
from tests.conftest import tiny_chat_checkpoint


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    from v4 import model

    return model.load(tiny_chat_checkpoint(tmp_path_factory.mktemp("scheduler"), seed=1), device="cpu",
                      dtype="float32")


PROMPTS = ["def add(a, b):\n", "import os\n", "class Box:\n"]
SAMPLING = [(0.0, 1.0, 0), (0.8, 0.9, 5), (0.0, 1.0, 0)]


def _alone(engine: Engine, ids: list[int], max_tokens: int, sampling: tuple[float, float, int]
           ) -> tuple[str, int, int]:
    runner = Runner(engine, 1024)
    text = "".join(runner.generate(ids, max_tokens, *sampling))
    return text, runner.last_answer.cached_tokens, runner.last_answer.completion_tokens


def test_requests_decoded_together_answer_as_alone(engine: Engine) -> None:
    prompts = [engine.tokenizer.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    alone = [_alone(engine, ids, 12, sampling) for ids, sampling in zip(prompts, SAMPLING)]
    scheduler = Scheduler(Runner(engine, 1024), max_batch=4)
    try:
        generations = [scheduler.submit(ids, 12, *sampling) for ids, sampling in zip(prompts, SAMPLING)]
        together = [("".join(g.pieces()), g.usage.cached_tokens, g.usage.completion_tokens) for g in generations]
    finally:
        scheduler.close()
    assert together == alone
    assert scheduler.widest >= 2 and scheduler.live_rows == 0


def test_a_closed_scheduler_refuses_new_requests(engine: Engine) -> None:
    scheduler = Scheduler(Runner(engine, 1024))
    scheduler.close()
    generation = scheduler.submit([1, 2, 3], 4)
    with pytest.raises(RunnerError, match="shutting down"):
        list(generation.pieces())


def test_a_bad_request_fails_alone(engine: Engine) -> None:
    scheduler = Scheduler(Runner(engine, 64))
    try:
        too_long = scheduler.submit([1] * 64, 4)
        fine = scheduler.submit([1, 2, 3], 4)
        with pytest.raises(RunnerError, match="the context holds 64"):
            list(too_long.pieces())
        list(fine.pieces())
        assert fine.usage.prompt_tokens == 3
    finally:
        scheduler.close()
