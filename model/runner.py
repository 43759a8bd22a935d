"""The engine runner: one decode state on an engine, rewound (never rebuilt) while prompts share a
prefix, so a session's system prompt and repository are prefilled once and each turn pays only for
what is new.

A mark is kept at the end of every prompt fed; the next prompt rewinds the state to the longest mark
that is a prefix of it. A fresh state resumes from the prefix-state store when there is one (and every
prefill through the store leaves its snapshots there for the next session). Answers decode on the
engine's static decoder where it runs (CUDA graphs), and are detokenized with the model's stop ids
and the chat format's stop strings, which the runner takes as data.

Token ids in, text pieces out; how each prefill and answer went comes back as data (`PrefillStats`,
`AnswerStats`). The agent's embedded backend is a chat format over this; `scheduler.py` batches
requests on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from .detokenizer import Detokenizer, stop_token_ids
from .engine import prefill_chunks, sample
from .prefix_store import PrefillStats
from .state import StateMark, mark, rewind

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from .engine import Engine
    from .prefix_store import PrefixStore
    from .state import DecodeState
    from .static_decode import StaticDecoder


class RunnerError(RuntimeError):
    """A request the runner cannot take: an engine without a tokenizer, an empty prompt, a prompt the
    context cannot hold, or a batch the scheduler cannot decode."""


@dataclass(slots=True)
class AnswerStats:
    """One answer's tokens and time, under OpenAI's usage names (`v4 serve` reports them as they are;
    the agent's `Usage` carries the same numbers for every backend without loading the engine)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, found prefilled (in the state or the store)
    completion_tokens: int = 0
    seconds: float = 0.0


class _Mark(NamedTuple):
    position: int  # tokens fed when it was taken
    saved: StateMark
    logits: torch.Tensor  # [vocab] float32, the logits after those tokens


class Runner:
    """One decode state on `engine`, fed prompts and decoding answers; see the module docstring."""

    def __init__(self, engine: Engine, context_length: int | None = None, store: PrefixStore | None = None,
                 static_decode: bool | None = None, stop_strings: Sequence[str] = ()) -> None:
        if engine.tokenizer is None:
            raise RunnerError("the checkpoint has no tokenizer.json: the embedded engine needs one")
        self.engine = engine
        self.tokenizer: Tokenizer = engine.tokenizer
        self.context_length = min(context_length or engine.context_length, engine.context_length)
        self.store = store  # a fresh state resumes from the longest prefix on disk
        # Answers decode on the engine's static decoder (CUDA graphs) where it can run: None = the
        # engine's default (on CUDA, without Engram layers); True/False force it (tests).
        self.static_decode = static_decode
        self.stop_strings = tuple(stop_strings)
        self.stop_ids = stop_token_ids(self.tokenizer, engine.model.config.eos_token_id, self.stop_strings)
        self.last_prefill: PrefillStats | None = None  # the last prefill that went through the store
        self.last_answer = AnswerStats()
        self._state: DecodeState | None = None
        self._fed: list[int] = []  # ids in the state, in order
        self._marks: list[_Mark] = []
        self._decoder: StaticDecoder | None = None  # holds the state's newest tokens until synced back

    @property
    def state(self) -> DecodeState | None:
        """The decode state (None before the first prompt); current between answers."""
        return self._state

    @property
    def held_ids(self) -> list[int]:
        """The ids the state holds, in order."""
        return list(self._fed)

    def room_after(self, ids: Sequence[int]) -> int:
        """Tokens the context has left after prompt `ids`; RunnerError if none (or no prompt)."""
        if not ids:
            raise RunnerError("the prompt is empty")
        room = self.context_length - len(ids)
        if room <= 0:
            raise RunnerError(f"the prompt is {len(ids):,} tokens; the context holds {self.context_length:,}")
        return room

    def detokenizer(self, steps: int, stop_strings: Sequence[str] = ()) -> Detokenizer:
        """An answer of at most `steps` tokens, ended by the model's stop ids, the runner's stop strings
        and `stop_strings` (a request's own)."""
        return Detokenizer(self.tokenizer, [*self.stop_strings, *stop_strings], self.stop_ids, steps)

    # ------------------------------------------------------------------------------------ prefill

    def prefill(self, ids: Sequence[int], boundaries: Sequence[int] = ()) -> tuple[torch.Tensor, PrefillStats]:
        """Bring the state to hold `ids` (rewound to the longest mark, else from the store, else from
        scratch), with the store's snapshots at `boundaries`.

        Returns:
            (logits `[vocab]` float32 after the last id, PrefillStats).
        """
        return self._feed(list(ids), boundaries)

    def _feed(self, ids: list[int], boundaries: Sequence[int] = (), prefer_store: bool = False
              ) -> tuple[torch.Tensor, PrefillStats]:
        """`prefill`; `prefer_store`: resume from the store, when there is one, unless the state holds
        all of `ids` already (a stepped prefill, whose steps the store keeps)."""
        started = time.perf_counter()
        self._sync_decoder()
        best: _Mark | None = None
        for saved in self._marks:
            if saved.position <= len(ids) and self._fed[:saved.position] == ids[:saved.position]:
                if best is None or saved.position > best.position:
                    best = saved
        if prefer_store and self.store is not None and best is not None and best.position < len(ids):
            best = None  # (without a store there is nothing to prefer: a step resumes from the last one)
        if best is None and self.store is not None:
            self._state, logits, stats = self.store.prefill(self.engine, ids, boundaries, self.context_length)
            self._fed, self._marks = list(ids), [_Mark(len(ids), mark(self._state), logits)]
            self.last_prefill = stats
            return logits, stats
        if best is None:
            self._state = self.engine.new_state(self.context_length)
            self._fed, self._marks = [], []
            reused, logits = 0, None
        else:
            reused, logits = best.position, best.logits
            rewind(self._state, best.saved)
            self._fed = self._fed[:reused]
            self._marks = [m for m in self._marks if m.position <= reused]
        computing = time.perf_counter()
        if len(ids) > reused:
            logits = self.engine.prefill(ids[reused:], self._state)
            self._fed = list(ids)
        computed_s = time.perf_counter() - computing
        if not self._marks or self._marks[-1].position != len(ids):
            self._marks.append(_Mark(len(ids), mark(self._state), logits))
        return logits, PrefillStats(tokens=len(ids), reused_tokens=reused, computed_tokens=len(ids) - reused,
                                    held_tokens=len(ids), prefill_s=computed_s,
                                    seconds=time.perf_counter() - started)

    def keep(self, ids: Sequence[int], boundaries: Sequence[int] = ()) -> PrefillStats:
        """Bring the state to `ids` (rewound to the longest mark) and snapshot it in the store at their
        end, with whatever whole chunks it does not hold yet: a later process resumes there. The
        state keeps a mark at the end, so the next prompt that extends `ids` starts from it."""
        if self.store is None:
            raise RunnerError("no prefix-state store to keep the state in")
        ids = list(ids)
        self.room_after(ids)
        logits, stats = self._feed(ids, boundaries)
        started = time.perf_counter()
        stats.store_bytes += self.store.save(self.engine, self._state, logits, ids)
        stats.snapshots_written += 1
        stats.seconds += time.perf_counter() - started
        return stats

    def warm(self, ids: Sequence[int], boundaries: Sequence[int] = (), cancelled: Callable[[], bool] | None = None,
             step_tokens: int | None = None) -> PrefillStats:
        """Prefill `ids` (no answer) in steps ending at `boundaries`, about `step_tokens` apart, asking
        `cancelled` before each: a question arriving meanwhile waits one step at most, and the state
        keeps what was done. With a store, every step goes through it, so the new tail's snapshots are
        on disk for the next session too."""
        started = time.perf_counter()
        ids = list(ids)
        step = step_tokens or prefill_chunks(self.engine.device).step_tokens
        stats = PrefillStats(tokens=len(ids), held_tokens=_common_prefix(ids, self._fed))  # what it holds already
        # A long stretch without a boundary is cut on the store's own grid: then every step ends where a
        # cold prefill snapshots too, its pieces are the same, and so are the logits, bit for bit.
        grid = self.store.chunk_tokens if self.store is not None else step
        stops = _warm_stops(boundaries, stats.held_tokens, len(ids), step, grid)
        for number, stop in enumerate(stops):
            if cancelled is not None and cancelled():
                stats.cancelled = True
                break
            marks = sorted({b for b in [*boundaries, *stops] if b < stop})
            _, done = self._feed(ids[:stop], marks, prefer_store=True)
            stats.reused_tokens = done.reused_tokens if number == 0 else stats.reused_tokens
            stats.computed_tokens += stop - done.reused_tokens
            stats.load_s += done.load_s
            stats.prefill_s += done.prefill_s
            stats.from_store = stats.from_store or done.from_store
            stats.snapshots_written += done.snapshots_written
            stats.store_bytes += done.store_bytes
            stats.held_tokens = stop
        if not stops:
            stats.reused_tokens = len(ids)
        stats.seconds = time.perf_counter() - started
        return stats

    # ------------------------------------------------------------------------------------- decode

    def generate(self, ids: Sequence[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0, boundaries: Sequence[int] = ()) -> Iterator[str]:
        """The text generated after prompt `ids` (a raw completion), in pieces as they decode; after the
        prefill `last_answer` holds the prompt's counts, and at the end the answer's too. The state
        keeps the answer's tokens (an abandoned answer's included) until the next prompt rewinds them."""
        started = time.perf_counter()
        ids = list(ids)
        room = self.room_after(ids)
        logits, stats = self._feed(ids, boundaries)
        self.last_answer = AnswerStats(prompt_tokens=len(ids), cached_tokens=stats.reused_tokens)
        generator = torch.Generator(device=self.engine.device).manual_seed(seed)
        answer = self.detokenizer(min(max_tokens, room))
        self._decoder = self._static_decoder(room)
        try:
            while not answer.finished:
                token = sample(logits, temperature, top_p, generator)
                yield from answer.take(token)
                if not answer.finished:
                    logits = self._decode_one(token)
                    self._fed.append(token)
        finally:
            self._sync_decoder()
        self.last_answer.completion_tokens = len(answer.generated)
        self.last_answer.seconds = time.perf_counter() - started

    def _static_decoder(self, room: int) -> StaticDecoder | None:
        """The static decoder that steps the session's state in place, set at the state's end, when
        static decoding applies (by default on CUDA; never with Engram layers). MTP layers do not stop
        it here, unlike in `engine.generate`: an answer's tokens never stay in the state (the next
        prompt rewinds to a prompt-end mark, which also restores the MTP layers the decoder does not
        advance)."""
        engine = self.engine
        wanted = self.static_decode if self.static_decode is not None else engine.device.type == "cuda"
        if not wanted or engine.model.config.engram is not None:
            return None
        decoder = engine.state_decoder(self._state, self._state.num_tokens + room)
        decoder.load_row(0, self._state)  # the decoder's own state: sets its position, copies nothing
        return decoder

    def _decode_one(self, token: int) -> torch.Tensor:
        """Feed `token`; the logits `[vocab]` after it."""
        if self._decoder is not None:
            return self._decoder.step([token])[0]
        return self.engine.forward([token], self._state)[-1]

    def _sync_decoder(self) -> None:
        """Give the state the static decoder's token count (also for an answer abandoned mid-way)."""
        if self._decoder is not None:
            self._decoder.store_row(0, self._state)
            self._decoder = None


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _warm_stops(boundaries: Sequence[int], start: int, end: int, step: int, grid: int) -> list[int]:
    """Where a stepped prefill pauses: boundaries after `start` at least `step` apart, then the end;
    a stretch with no boundary for over two steps is also cut at the multiples of `grid` in it."""
    stops: list[int] = []
    last = start
    for point in [*sorted(b for b in boundaries if start < b < end), end]:
        if point - last > 2 * step:
            first = (last + step + grid - 1) // grid * grid
            for cut in range(first, point - step + 1, grid):
                stops.append(cut)
                last = cut
        if point - last >= step or point == end:
            stops.append(point)
            last = point
    return [s for s in dict.fromkeys(stops) if s > 0]
