"""Continuous batching (`v4 serve`): concurrent requests decode together on the engine's static
batched decoder, one step for every active row per token (nano-vllm's scheduler, reduced to what one
engine and one prefix cache need).

One scheduler thread owns the runner. A request waits until a row is free, is prefilled through the
runner (so its prefix marks and the prefix-state store serve every request: `cached_tokens`), and its
prefilled state is copied into a row of the decoder; the runner's own state stays at the prompt for
the next request to reuse. Between steps new requests join and finished ones leave, so a long answer
never holds up a short one. Each request samples with its own generator from its own row's logits,
exactly as `Runner.generate` does: the same text as running it alone.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .detokenizer import Detokenizer
from .engine import sample
from .runner import AnswerStats, Runner, RunnerError

if TYPE_CHECKING:
    from .static_decode import StaticDecoder

DONE = object()  # the item that ends a generation's stream


@dataclass(slots=True)
class Generation:
    """One request's answer as it is produced: text pieces, then `DONE` or a RunnerError, handed to
    `sink` from the scheduler thread (by default a queue that `pieces()` blocks on); `usage` is final
    once `DONE` has come. `cancel()` (a client that went away) frees its row before the next step."""

    ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...] = ()  # the request's own stop strings, beside the runner's
    sink: Callable[[object], None] | None = None
    usage: AnswerStats = field(default_factory=AnswerStats)
    _queue: queue.Queue[object] = field(default_factory=queue.Queue)
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def pieces(self) -> Iterator[str]:
        """The answer's text pieces, blocking for each (without a `sink`); raises what failed it."""
        while True:
            item = self._queue.get()
            if item is DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        """Stop generating: the row is freed before the next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def emit(self, item: object) -> None:
        """Hand a piece, `DONE` or an error to the sink (from the scheduler thread)."""
        (self.sink or self._queue.put)(item)


@dataclass(slots=True)
class _Row:
    generation: Generation
    answer: Detokenizer
    generator: torch.Generator
    logits: torch.Tensor  # [vocab] float32: what the next token is sampled from
    started: float
    pending: int = 0  # the sampled token the next step feeds


class Scheduler:
    """Up to `max_batch` requests decoding at once on `runner`'s engine."""

    def __init__(self, runner: Runner, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if runner.engine.model.config.engram is not None:
            raise RunnerError("batched decoding does not run Engram layers yet; serve one request at a time")
        self.runner, self.max_batch = runner, max_batch
        self._waiting: queue.Queue[Generation | None] = queue.Queue()  # None: wake up (closing)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = threading.Event()
        self._rows: dict[int, _Row] = {}  # decoder row -> request, owned by the scheduler thread
        self.steps = 0  # decode steps run (each for every active row): tests and stats
        self.widest = 0  # the most rows one step has decoded
        self.moves = 0  # times the active rows moved to a larger decoder

    def submit(self, ids: list[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0, stop: tuple[str, ...] = (), sink: Callable[[object], None] | None = None
               ) -> Generation:
        """Queue a request (starting the scheduler thread on the first); its answer arrives through
        the returned Generation."""
        generation = Generation(list(ids), max_tokens, temperature, top_p, seed, tuple(stop), sink)
        with self._start_lock:
            if self._closed.is_set():
                generation.emit(RunnerError("the server is shutting down"))
                return generation
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="v4-scheduler", daemon=True)
                self._thread.start()
        self._waiting.put(generation)
        return generation

    @property
    def live_rows(self) -> int:
        """Rows decoding now (a cancelled request's row is gone before the next step)."""
        return len(self._rows)

    def close(self, timeout: float = 1.0) -> None:
        """Stop decoding: every active and waiting request fails with a RunnerError, and the
        scheduler thread ends after its current step (waited for up to `timeout` seconds)."""
        with self._start_lock:
            self._closed.set()
            thread = self._thread
        self._waiting.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # ------------------------------------------------------------------ the scheduler thread

    def _run(self) -> None:
        rows = self._rows
        pending: list[Generation | None] = []
        decoder: StaticDecoder | None = None
        while True:
            if not rows and not pending:  # idle: block for work
                pending.append(self._waiting.get())
            while True:
                try:
                    pending.append(self._waiting.get_nowait())
                except queue.Empty:
                    break
            pending = [g for g in pending if g is not None and not g.cancelled]
            for index in [i for i, row in rows.items() if row.generation.cancelled]:
                del rows[index]  # its client went away: the row is free for the next request
            if self._closed.is_set():
                for generation in [row.generation for row in rows.values()] + pending:
                    generation.emit(RunnerError("the server is shutting down"))
                rows.clear()
                return
            while pending and len(rows) < self.max_batch:
                generation = pending.pop(0)
                try:
                    admitted = self._admit(generation)
                except Exception as exc:  # noqa: BLE001 - the request fails, the server goes on
                    generation.emit(exc if isinstance(exc, RunnerError) else RunnerError(str(exc)))
                    continue
                if admitted is None:
                    continue  # finished at its first token
                row_state, capacity = admitted
                wanted = min(self.max_batch, len(rows) + 1 + len(pending))  # room for the burst at once
                decoder, rows = self._decoder_for(wanted, capacity, decoder, rows)
                self._rows = rows  # a move to a larger decoder renumbers the rows
                free = next(r for r in range(decoder.batch) if r not in rows)
                decoder.load_row(free, self.runner.state)
                rows[free] = row_state
            if rows:
                try:
                    self._step(decoder, rows)
                except Exception as exc:  # noqa: BLE001 - every request in the step fails alike
                    for row in rows.values():
                        row.generation.emit(RunnerError(f"decoding failed: {exc}"))
                    rows.clear()

    def _decoder_for(self, wanted: int, capacity: int, decoder: StaticDecoder | None, rows: dict[int, _Row]
                     ) -> tuple[StaticDecoder, dict[int, _Row]]:
        """A decoder with room for `wanted` rows: the current one if it has it, else the engine's next
        batch bucket, the active rows moved over (through eager states). A step costs what its bucket
        costs, so one request alone runs on the 1-row decoder, not on `max_batch` rows."""
        engine = self.runner.engine
        if decoder is not None and rows and decoder.batch >= wanted:
            decoder.grow(capacity)
            return decoder, rows
        target = engine.static_decoder(max(wanted, len(rows)), capacity)
        if decoder is None or decoder is target or not rows:
            return target, rows
        moved = {}
        for new_index, (old_index, row) in enumerate(sorted(rows.items())):
            state = engine.new_state(max(capacity, decoder.lengths[old_index] + row.answer.steps), draft=False)
            decoder.store_row(old_index, state)
            target.load_row(new_index, state)
            moved[new_index] = row
        self.moves += 1
        return target, moved

    def _admit(self, generation: Generation) -> tuple[_Row, int] | None:
        """Prefill the request and take its first token; None if that already ended it."""
        runner = self.runner
        ids = generation.ids
        room = runner.room_after(ids)
        started = time.perf_counter()
        logits, stats = runner.prefill(ids)
        generation.usage = AnswerStats(prompt_tokens=len(ids), cached_tokens=stats.reused_tokens)
        generator = torch.Generator(device=runner.engine.device).manual_seed(generation.seed)
        answer = runner.detokenizer(min(generation.max_tokens, room), generation.stop)
        row = _Row(generation, answer, generator, logits, started)
        if self._advance(row) is None:
            return None
        return row, len(ids) + row.answer.steps

    def _advance(self, row: _Row) -> int | None:
        """Sample the row's next token from its logits and stream it: the token to feed, or None when
        the row is finished (its generation closed)."""
        generation = row.generation
        token = sample(row.logits, generation.temperature, generation.top_p, row.generator)
        for piece in row.answer.take(token):
            generation.emit(piece)
        if row.answer.finished:
            generation.usage.completion_tokens = len(row.answer.generated)
            generation.usage.seconds = time.perf_counter() - row.started
            generation.emit(DONE)
            return None
        row.pending = token
        return token

    def _step(self, decoder: StaticDecoder, rows: dict[int, _Row]) -> None:
        """One decoder step for every active row, then each row's next token."""
        tokens = [0] * decoder.batch
        active = [False] * decoder.batch
        for index, row in rows.items():
            tokens[index], active[index] = row.pending, True
        logits = decoder.step(tokens, active)
        self.steps += 1
        self.widest = max(self.widest, len(rows))
        for index in list(rows):
            rows[index].logits = logits[index]
            if self._advance(rows[index]) is None:
                del rows[index]
