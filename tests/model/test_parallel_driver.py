"""A driven engine (model/parallel_driver.py) over 2 gloo ranks of this host, its worker spawned by the
test's process: the tokens of one process through the engine, a batch on the static decoder, the
speculative path and the runner (whose rewinds and store restores the workers never see, so they are
synced); the prefix-state store keyed per rank count, and saying so; a worker that dies stops the
engine with an error naming it, at once and not after a timeout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import tiny_chat_checkpoint
from v4 import model
from v4.model.parallel_protocol import ParallelError
from v4.model.prefix_store import PrefixStore
from v4.model.runner import Runner

PROMPT = list(range(5, 45))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("driven"), seed=2)


@pytest.fixture(scope="module")
def engines(checkpoint: Path):
    """(one process, two ranks) over the same checkpoint; the workers stop after the module."""
    one = model.load(checkpoint, device="cpu", dtype="float32", cpu_threads=1)
    two = model.load(checkpoint, device="cpu", dtype="float32", cpu_threads=1, ranks=2)
    assert type(two).__name__ == "DrivenEngine" and two.ranks == 2
    yield one, two
    two.close()
    assert not any(p.is_alive() for p in two.driver.processes)


def test_two_ranks_generate_the_tokens_of_one_process(engines) -> None:
    one, two = engines
    assert list(two.generate(PROMPT, 10)) == list(one.generate(PROMPT, 10))
    prompts = [PROMPT, PROMPT[:7], PROMPT[3:30]]
    assert two.generate_batch(prompts, 6) == one.generate_batch(prompts, 6)  # the static decoder, replicated
    assert two.has_draft_head
    speculative = list(two.generate(PROMPT, 8, speculative=True))  # drafts, rewinds of rejected ones
    assert speculative == list(one.generate(PROMPT, 8))
    sampled = {"temperature": 0.8, "top_p": 0.9, "seed": 3, "speculative": True, "static": True}
    assert list(two.generate(PROMPT, 8, **sampled)) == list(one.generate(PROMPT, 8, **sampled))  # seeded alike
    ours, theirs = two.forward(PROMPT, two.new_state()), one.forward(PROMPT, one.new_state())
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-5


def test_a_callers_error_leaves_the_ranks_in_step(engines) -> None:
    one, two = engines
    state = two.new_state(8)
    with pytest.raises(model.EngineInputError):
        two.forward(PROMPT, state)  # 40 ids into a state of 8: refused on every rank alike
    with pytest.raises(model.EngineInputError, match="another engine"):
        two.forward(PROMPT[:3], one.new_state())
    assert list(two.generate(PROMPT[:9], 4)) == list(one.generate(PROMPT[:9], 4))


def test_the_runner_and_the_store_on_two_ranks(engines, tmp_path: Path) -> None:
    one, two = engines
    prompts = [PROMPT, PROMPT[:25] + [9, 8, 7], PROMPT + [11, 12]]  # a rewind, then a longer prompt
    expected = ["".join(Runner(one).generate(ids, 6)) for ids in prompts]
    runner = Runner(two, store=PrefixStore(tmp_path / "store", chunk_tokens=16))
    assert ["".join(runner.generate(ids, 6)) for ids in prompts] == expected
    assert runner.last_answer.cached_tokens >= 25  # resumed (from a mark or the store), not from scratch

    warnings: list[str] = []
    fresh = Runner(two, store=PrefixStore(tmp_path / "store", chunk_tokens=16, warn=warnings.append))
    assert "".join(fresh.generate(PROMPT, 6)) == expected[0]  # restored by the driver, synced to the worker
    assert fresh.last_prefill.reused_tokens == len(PROMPT) and not warnings

    single = Runner(one, store=PrefixStore(tmp_path / "store", chunk_tokens=16, warn=warnings.append))
    assert "".join(single.generate(PROMPT, 6)) == expected[0]
    assert single.last_prefill.reused_tokens == 0  # a state of 2 ranks does not load on 1
    assert any("prefilled on 2 ranks" in w and "this run has 1" in w for w in warnings), warnings


def test_the_runners_in_place_decoder_on_two_ranks(engines) -> None:
    """The runner decodes on a decoder over its own state (Engine.state_decoder) on every rank, with
    rewinds to prompt marks between answers: the eager path's answers."""
    one, two = engines
    prompts = [PROMPT, PROMPT[:25] + [9, 8, 7], PROMPT + [11, 12]]
    expected = ["".join(Runner(one, static_decode=False).generate(ids, 6)) for ids in prompts]
    runner = Runner(two, static_decode=True)
    assert ["".join(runner.generate(ids, 6)) for ids in prompts] == expected
    assert runner.state is not None and "plain" in runner.state.decoders


def test_a_worker_that_dies_stops_the_engine_naming_it(checkpoint: Path) -> None:
    engine = model.load(checkpoint, device="cpu", dtype="float32", cpu_threads=1, ranks=2)
    heard: list[Exception] = []
    engine.driver.on_failure(heard.append)
    try:
        state = engine.new_state()
        engine.forward(PROMPT[:5], state)
        engine.driver.processes[0].kill()
        started = time.monotonic()
        with pytest.raises(ParallelError, match=r"rank 1 of 2 \(CPU\) was killed by SIGKILL; the engine on 2 ranks"):
            engine.forward(PROMPT[5:9], state)
        assert time.monotonic() - started < 10
        assert len(heard) == 1 and "SIGKILL" in str(heard[0])
        with pytest.raises(ParallelError, match="SIGKILL"):  # and every later call, at once
            engine.new_state()
    finally:
        engine.close()
