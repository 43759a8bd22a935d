"""Backends: one interface (stream the assistant's text for a conversation, report token usage) over
the embedded V4 engine, an OpenAI-compatible HTTP endpoint (vLLM, SGLang, `v4 serve`, a hosted V4),
and a replay file (tests and demos).

The embedded backend keeps the decode state between calls and rewinds it to the longest prompt
prefix it has already fed (marks at the end of every prompt), so the system prompt and the
repository are prefilled once per session and each turn only pays for what is new.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .chat_format import ChatFormat, Message


# Tokens per step of a background prefill (`EmbeddedBackend.warm`): a question waits at most one step.
WARM_STEP_TOKENS = {"cpu": 1024, "cuda": 8192}


class BackendError(RuntimeError):
    """A backend that cannot answer (unreachable endpoint, exhausted replay, bad checkpoint)."""


@dataclass(slots=True)
class Usage:
    """Tokens of one call: the prompt (of which `cached` were reused from an earlier call) and the answer."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {"prompt": self.prompt_tokens, "cached": self.cached_tokens,
                "completion": self.completion_tokens, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True, slots=True)
class WarmStats:
    """How a background prefill went (`EmbeddedBackend.warm`)."""

    tokens: int  # the prompt's length
    held_tokens: int  # how much of it the state holds now (all of it unless cancelled)
    reused_tokens: int  # found prefilled already: in the state or the Engram store
    computed_tokens: int
    seconds: float
    cancelled: bool = False

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "held_tokens": self.held_tokens, "reused_tokens": self.reused_tokens,
                "computed_tokens": self.computed_tokens, "prefill_s": round(self.seconds, 4),
                "cancelled": self.cancelled}


class Backend(Protocol):
    """What the session needs from a model."""

    name: str
    context_length: int  # tokens the backend can hold (prompt + answer)
    last_usage: Usage

    def stream(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        """The assistant's answer to `messages`, as text pieces while they are generated."""
        ...

    def count_tokens(self, text: str) -> int | None:
        """Tokens `text` costs in this backend's tokenizer (None: unknown)."""
        ...


@dataclass
class ReplayBackend:
    """Scripted answers, one per call, from a JSON file: a list of strings, or {"responses": [...]}."""

    responses: list[str]
    name: str = "replay"
    context_length: int = 1_048_576
    last_usage: Usage = field(default_factory=Usage)
    calls: list[list[Message]] = field(default_factory=list)  # what each call was asked, for tests

    @classmethod
    def from_file(cls, path: Path) -> ReplayBackend:
        try:
            data = json.loads(Path(path).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot read replay file {path}: {exc}") from exc
        responses = data.get("responses") if isinstance(data, dict) else data
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise BackendError(f"{path}: a replay file is a JSON list of strings or {{\"responses\": [...]}}")
        return cls(list(responses))

    def stream(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        if len(self.calls) >= len(self.responses):
            raise BackendError(f"the replay script has only {len(self.responses)} responses")
        self.calls.append(list(messages))
        text = self.responses[len(self.calls) - 1]
        self.last_usage = Usage(prompt_tokens=sum(len(m.content) // 4 for m in messages),
                                completion_tokens=len(text) // 4)
        for start in range(0, len(text), 64):
            yield text[start : start + 64]

    def count_tokens(self, text: str) -> int | None:
        return None


@dataclass
class HttpBackend:
    """An OpenAI-compatible `/v1/chat/completions` endpoint, streamed (server-sent events)."""

    endpoint: str
    model: str | None = None
    api_key: str | None = None
    context_length: int = 1_048_576
    timeout_s: float = 600.0
    name: str = "http"
    last_usage: Usage = field(default_factory=Usage)

    def _url(self, path: str) -> str:
        base = self.endpoint.rstrip("/")
        return base + path if base.endswith("/v1") else base + "/v1" + path

    def _request(self, path: str, body: dict | None = None) -> urllib.request.Request:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        return urllib.request.Request(self._url(path), data=data, headers=headers, method="POST" if data else "GET")

    def _model_name(self) -> str:
        if self.model is None:
            try:
                with urllib.request.urlopen(self._request("/models"), timeout=30) as response:
                    self.model = json.load(response)["data"][0]["id"]
            except (OSError, ValueError, KeyError, IndexError) as exc:
                raise BackendError(f"{self._url('/models')}: cannot list the endpoint's models ({exc}); "
                                   "pass the model name") from exc
        return self.model

    def stream(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        body = {"model": self._model_name(), "stream": True, "max_tokens": max_tokens, "temperature": temperature,
                "messages": [{"role": m.role, "content": m.content} for m in messages],
                "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        self.last_usage = Usage()
        try:
            response = urllib.request.urlopen(self._request("/chat/completions", body), timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise BackendError(f"{self._url('/chat/completions')} answered {exc.code}: {detail}") from exc
        except OSError as exc:
            raise BackendError(f"cannot reach {self.endpoint}: {exc}") from exc
        with response:
            for raw in response:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:"):].strip()
                if payload == "[DONE]":
                    break
                try:
                    chunk = json.loads(payload)
                except ValueError as exc:
                    raise BackendError(f"the endpoint sent a malformed event: {payload[:200]}") from exc
                if chunk.get("usage"):
                    usage = chunk["usage"]
                    details = usage.get("prompt_tokens_details") or {}
                    self.last_usage = Usage(usage.get("prompt_tokens", 0), details.get("cached_tokens", 0) or 0,
                                            usage.get("completion_tokens", 0))
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece
        self.last_usage.seconds = time.perf_counter() - started

    def count_tokens(self, text: str) -> int | None:
        return None


class EmbeddedBackend:
    """The V4 engine in this process. Prompts are rendered with the checkpoint's chat format and fed
    into one decode state that is rewound, never rebuilt, while prompts share a prefix."""

    name = "embedded"

    def __init__(self, engine: object, chat_format: ChatFormat, context_length: int | None = None,
                 store: object | None = None, static_decode: bool | None = None) -> None:
        if getattr(engine, "tokenizer", None) is None:
            raise BackendError("the checkpoint has no tokenizer.json: the embedded backend needs one")
        self.engine = engine
        self.chat_format = chat_format
        self.tokenizer = engine.tokenizer
        limit = min(engine.config.max_seq_len, engine.model.config.max_position_embeddings)
        self.context_length = min(context_length or limit, limit)
        self.last_usage = Usage()
        self.store = store  # an EngramStore: a fresh state resumes from the longest prefix on disk
        self.last_prefill = None  # the store's PrefillStats of the last cold start
        self._state = None
        self._fed: list[int] = []  # ids in the state, in order
        self._marks: list[tuple[int, object, object]] = []  # (tokens fed, StateMark, last logits there)
        self._stop_ids = self._stop_token_ids()
        # Answers decode on the engine's static decoder (CUDA graphs) where it can run: None = the
        # engine's default (on CUDA, without MTP or Engram layers); True/False force it (tests).
        self.static_decode = static_decode
        self._decoder = None  # the static decoder holding the state's newest tokens, until synced back

    def _stop_token_ids(self) -> set[int]:
        ids = set()
        eos = self.engine.model.config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
        for text in self.chat_format.stop_strings:
            token = self.tokenizer.token_to_id(text)
            if token is not None:
                ids.add(token)
        return ids

    def count_tokens(self, text: str) -> int | None:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode(self, messages: Sequence[Message]) -> list[int]:
        return self.encode_with_boundaries(messages)[0]

    def encode_with_boundaries(self, messages: Sequence[Message], add_generation_prompt: bool = True
                               ) -> tuple[list[int], list[int]]:
        """The prompt's ids and the token positions where its parts start: each repository segment
        (`==> path <==` headers) and the end of the system message. The Engram store snapshots there,
        so an edit to one file recomputes only from that file's segment on."""
        import bisect
        import re

        text = self.chat_format.render(messages, add_generation_prompt=add_generation_prompt)
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        marks = [m.start() for m in re.finditer(r"(?m)^==> ", text)]
        if messages and messages[0].role == "system" and len(messages) > 1:
            marks.append(len(self.chat_format.render(messages[:1], add_generation_prompt=False)))
        starts = [start for start, _ in encoding.offsets]
        boundaries = sorted({bisect.bisect_left(starts, mark) for mark in marks} - {0, len(encoding.ids)})
        return encoding.ids, boundaries

    def warm(self, messages: Sequence[Message], cancelled: Callable[[], bool] | None = None,
             step_tokens: int | None = None) -> WarmStats:
        """Prefill `messages` (no answer) in steps ending at segment boundaries, about `step_tokens`
        apart, asking `cancelled` before each: a question arriving meanwhile waits one step at most,
        and the state keeps what was done. With a store, every step goes through it, so the new
        tail's snapshots are on disk for the next session too."""
        started = time.perf_counter()
        ids, boundaries = self.encode_with_boundaries(messages, add_generation_prompt=False)
        step = step_tokens or WARM_STEP_TOKENS.get(self.engine.device.type, 4096)
        held = _common_prefix(ids, self._fed)  # what the state already holds of it
        # A long stretch without a boundary is cut on the store's own grid: then every step ends where a
        # cold prefill snapshots too, its pieces are the same, and so are the logits, bit for bit.
        grid = getattr(self.store, "chunk_tokens", None) or step
        stops = _warm_stops(boundaries, held, len(ids), step, grid)
        reused = computed = 0
        for number, stop in enumerate(stops):
            if cancelled is not None and cancelled():
                return WarmStats(len(ids), held, reused, computed, time.perf_counter() - started, True)
            marks = sorted({b for b in [*boundaries, *stops] if b < stop})
            _, got = self._prefill(ids[:stop], marks, prefer_store=True)
            reused = got if number == 0 else reused
            computed += stop - got
            held = stop
        return WarmStats(len(ids), held, reused if stops else len(ids), computed, time.perf_counter() - started)

    def _prefill(self, ids: list[int], boundaries: Sequence[int] = (), prefer_store: bool = False
                 ) -> tuple[object, int]:
        """Bring the state to hold `ids`; returns the logits after them and how many were reused.
        `prefer_store`: resume from the store unless the state holds all of `ids` already (a stepped
        prefill, whose steps the store keeps)."""
        from v4.model.state import mark, rewind

        self._sync_decoder()
        best = None
        for position, saved, logits in self._marks:
            if position <= len(ids) and self._fed[:position] == ids[:position]:
                if best is None or position > best[0]:
                    best = (position, saved, logits)
        if prefer_store and best is not None and best[0] < len(ids):
            best = None
        if best is None and self.store is not None:
            self._state, logits, self.last_prefill = self.store.prefill(self.engine, ids, boundaries,
                                                                        self.context_length)
            self._fed, self._marks = list(ids), []
            self._marks.append((len(ids), mark(self._state), logits))
            return logits, self.last_prefill.reused_tokens
        if best is None:
            self._state = self.engine.new_state(self.context_length)
            self._fed, self._marks = [], []
            reused, logits = 0, None
        else:
            reused, saved, logits = best
            rewind(self._state, saved)
            self._fed = self._fed[:reused]
            self._marks = [m for m in self._marks if m[0] <= reused]
        if len(ids) > reused:
            logits = self.engine.prefill(ids[reused:], self._state)
            self._fed = list(ids)
        if not self._marks or self._marks[-1][0] != len(ids):
            self._marks.append((len(ids), mark(self._state), logits))
        return logits, reused

    def stream(self, messages: Sequence[Message], max_tokens: int, temperature: float = 0.0) -> Iterator[str]:
        ids, boundaries = self.encode_with_boundaries(messages)
        yield from self.stream_ids(ids, max_tokens, temperature, boundaries=boundaries)

    def stream_ids(self, ids: list[int], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                   seed: int = 0, boundaries: Sequence[int] = ()) -> Iterator[str]:
        """The text generated after prompt `ids` (a raw completion; `stream` renders a chat first)."""
        import torch

        from v4.model.engine import sample

        started = time.perf_counter()
        room = self.room_after(ids)
        logits, reused = self._prefill(ids, boundaries)
        self.last_usage = Usage(prompt_tokens=len(ids), cached_tokens=reused)
        generator = torch.Generator(device=self.engine.device).manual_seed(seed)
        answer = self.new_answer(min(max_tokens, room))
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
        self.last_usage.completion_tokens = len(answer.generated)
        self.last_usage.seconds = time.perf_counter() - started

    def room_after(self, ids: Sequence[int]) -> int:
        """Tokens the context has left after prompt `ids`; BackendError if none (or no prompt)."""
        if not ids:
            raise BackendError("the prompt is empty")
        room = self.context_length - len(ids)
        if room <= 0:
            raise BackendError(f"the prompt is {len(ids):,} tokens; the context holds {self.context_length:,}")
        return room

    def new_answer(self, steps: int) -> Answer:
        """An answer of at most `steps` tokens, ended by this model's stop ids and stop strings."""
        return Answer(self.tokenizer, self.chat_format.stop_strings, self._stop_ids, steps)

    def _static_decoder(self, room: int) -> object | None:
        """The engine's one-row static decoder loaded with the state, when static decoding applies (by
        default on CUDA; never with Engram layers). MTP layers do not stop it here, unlike in
        `engine.generate`: an answer's tokens never stay in the state (the next prompt rewinds to a
        prompt-end mark, which also restores the MTP layers the decoder does not advance)."""
        engine = self.engine
        wanted = self.static_decode if self.static_decode is not None else engine.device.type == "cuda"
        if not wanted or engine.model.config.engram is not None:
            return None
        decoder = self.engine.static_decoder(1, self._state.num_tokens + room)
        decoder.load_row(0, self._state)
        return decoder

    def _decode_one(self, token: int) -> object:
        """Feed `token`; the logits after it."""
        if self._decoder is not None:
            return self._decoder.step([token])[0]
        return self.engine.forward([token], self._state)[-1]

    def _sync_decoder(self) -> None:
        """Write the static decoder's row back into the state (also for an answer abandoned mid-way)."""
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


class Answer:
    """One answer's sampled tokens -> the text pieces to stream, and when it ends: a stop id (not part
    of the answer), a stop string (the text is cut before it), or `steps` tokens. A piece is streamed
    once its token decodes to whole characters (a split UTF-8 character waits for its rest). Shared by
    `stream_ids` and the serve batcher."""

    def __init__(self, tokenizer: object, stop_strings: Sequence[str], stop_ids: set[int], steps: int) -> None:
        self.tokenizer, self.stop_strings, self.stop_ids, self.steps = tokenizer, stop_strings, stop_ids, steps
        self.generated: list[int] = []
        self.printed = ""
        self.finished = steps <= 0

    def take(self, token: int) -> list[str]:
        """The pieces `token` completes (possibly none); sets `finished`."""
        if token in self.stop_ids:
            self.finished = True
            return []
        self.generated.append(token)
        text = self.tokenizer.decode(self.generated)
        stop_at = _first_stop(text, self.stop_strings)
        if stop_at is not None:
            self.finished = True
            return [text[len(self.printed):stop_at]] if stop_at > len(self.printed) else []
        pieces = []
        if not text.endswith("\ufffd"):
            pieces.append(text[len(self.printed):])
            self.printed = text
        if len(self.generated) == self.steps:
            self.finished = True
            if len(text) > len(self.printed):  # what a split character held back
                pieces.append(text[len(self.printed):])
        return pieces


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None
