"""Speculative generation with the MTP draft head: each step verifies one drafted token beside the
token before it, so a held draft yields two ids for one step's weight reads.

Greedy, it yields the ids plain greedy decoding yields; sampling (a `Sampling`), it draws drafts from
the MTP block's processed distribution q and keeps or replaces them by the rejection rule
(sampling.py), so the ids are distributed exactly as plain sampling's. Two paths: the eager one
(Engine.forward on two tokens, the state marked and rewound on a rejected draft) and the static one
(static_verify.py's DraftDecoder: one CUDA-graphed verify step per draft, rollback free by
construction), for one sequence or (greedy) a batch whose rows accept independently. Sampling, both
draw the same noise from the same seeded streams in the same order, so they yield the same ids. Either
leaves a given state as plain decoding would: holding the prompt and every yielded id but the last, its
MTP layer following it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .sampling import FIRST_STREAM, STEP_STREAM, Sampling, StepNoise, accept_or_resample, draw, processed, sample
from .state import DecodeState, mark, rewind
from .static_decode import StaticDecoder
from .static_verify import DraftDecoder


@dataclass(slots=True)
class DraftStats:
    """How the last speculative generation went (acceptance = accepted / drafted)."""

    drafted: int = 0
    accepted: int = 0


class SpeculativeEngine(Protocol):
    """What these loops use of model.engine.Engine (which imports this module)."""

    draft_stats: DraftStats
    has_draft_head: bool

    def prefill(self, token_ids: Sequence[int], state: DecodeState) -> torch.Tensor: ...
    def forward(self, token_ids: Sequence[int], state: DecodeState) -> torch.Tensor: ...
    def draft(self, state: DecodeState, next_token: int) -> torch.Tensor: ...
    def draft_decoder(self, batch: int, capacity: int) -> DraftDecoder: ...
    def state_decoder(self, state: DecodeState, capacity: int, draft: bool = False) -> StaticDecoder: ...
    def new_state(self, max_tokens: int | None = None, draft: bool = True) -> DecodeState: ...

    @property
    def device(self) -> torch.device: ...


class _Greedy:
    """The eager path's choices at temperature 0: argmax everywhere, a draft holds iff it is the argmax."""

    def plain(self, logits: torch.Tensor) -> int:
        """The id after `logits` `[vocab]` (a step without a draft)."""
        return int(logits.argmax())

    def draft(self, logits: torch.Tensor) -> int:
        """The draft from the MTP block's `logits` `[vocab]`."""
        return int(logits.argmax())

    def verify(self, logits: torch.Tensor, draft: int) -> tuple[bool, int, int]:
        """From `logits` `[2, vocab]` of [token, draft]: whether `draft` holds, the id after the token,
        and the id after the draft (meant only where it held)."""
        settled = int(logits[0].argmax())
        return settled == draft, settled, int(logits[1].argmax())


class _Sampled(_Greedy):
    """The eager path's choices when sampling: the same draws, from the same streams in the same order,
    as the draft decoder's (`set_sampling`, `first_drafts`, `verify`)."""

    def __init__(self, sampling: Sampling, device: torch.device) -> None:
        self.sampling, self.device = sampling, device
        self._plain = sampling.generator(device, FIRST_STREAM)
        self._steps = sampling.generator(device, STEP_STREAM)
        self._draft_noise: torch.Tensor | None = None  # drawn with each step's noise (the first on its own)
        self._draft_probs: torch.Tensor | None = None  # q of the last draft

    def plain(self, logits: torch.Tensor) -> int:
        return sample(logits, self.sampling.temperature, self.sampling.top_p, self._plain)

    def draft(self, logits: torch.Tensor) -> int:
        if self._draft_noise is None:
            self._draft_noise = torch.empty(1, logits.shape[-1], device=self.device).exponential_(generator=self._steps)
        self._draft_probs = self._processed(logits[None])
        return int(draw(self._draft_probs, self._draft_noise)[0])

    def verify(self, logits: torch.Tensor, draft: int) -> tuple[bool, int, int]:
        noise = StepNoise.empty(1, logits.shape[-1], self.device)
        noise.draw(self._steps)
        target = self._processed(logits)
        drafted = torch.tensor([draft], device=self.device)
        assert self._draft_probs is not None, "verify follows draft"
        accepted, settled = accept_or_resample(target[:1], self._draft_probs, drafted, noise.uniform, noise.target)
        self._draft_noise = noise.draft
        return bool(accepted[0]), int(settled[0]), int(draw(target[1], noise.target[0]))

    def _processed(self, logits: torch.Tensor) -> torch.Tensor:
        return processed(logits, self.sampling.temperature, self.sampling.top_p)


def _choices(sampling: Sampling | None, device: torch.device) -> _Greedy:
    """The eager path's choices: greedy, or sampling by the rejection rule."""
    return _Greedy() if sampling is None else _Sampled(sampling, device)


def eager_speculative(engine: SpeculativeEngine, prompt_ids: Sequence[int], max_new_tokens: int, stop: Sequence[int],
                      state: DecodeState, sampling: Sampling | None = None) -> Iterator[int]:
    """Draft with Engine.draft, verify with one two-token Engine.forward, rewind a rejected draft."""
    if max_new_tokens <= 0:
        return
    engine.draft_stats = DraftStats()
    picks = _choices(sampling, engine.device)
    token = picks.plain(engine.prefill(prompt_ids, state))
    produced = 0
    while True:
        yield token
        produced += 1
        if token in stop or produced == max_new_tokens:
            return
        if state.num_tokens + 2 > state.max_tokens or not engine.has_draft_head:
            token = picks.plain(engine.forward([token], state)[-1])
            continue
        drafted = picks.draft(engine.draft(state, token))
        before = mark(state)
        logits = engine.forward([token, drafted], state)
        accepted, settled, bonus = picks.verify(logits, drafted)
        engine.draft_stats.drafted += 1
        if not accepted:  # undo the draft: the state must hold only what was yielded
            rewind(state, before)
            engine.forward([token], state)
            token = settled
            continue
        engine.draft_stats.accepted += 1
        yield drafted
        produced += 1
        if drafted in stop or produced == max_new_tokens:
            rewind(state, before)  # leave the state as plain decoding would: without the last id
            engine.forward([token], state)
            return
        token = bonus


def static_speculative(engine: SpeculativeEngine, prompt_ids: Sequence[int], max_new_tokens: int, stop: Sequence[int],
                       state: DecodeState, sampling: Sampling | None = None, in_place: bool = False) -> Iterator[int]:
    """Verify steps on a draft decoder (1 or 2 ids each) after an eager prefill: one over `state`
    (`in_place`) or the engine's bucketed one; the state gets the tokens back even when the caller
    stops early. The caller checks that `state` has room for the prompt and `max_new_tokens - 1` more."""
    if max_new_tokens <= 0:
        return
    engine.draft_stats = DraftStats()
    token = _choices(sampling, engine.device).plain(engine.prefill(prompt_ids, state))
    yield token
    if token in stop or max_new_tokens == 1:
        return
    room = state.num_tokens + max_new_tokens
    decoder = engine.state_decoder(state, room, draft=True) if in_place else engine.draft_decoder(1, room)
    decoder.set_sampling(sampling)
    pair = (token, decoder.start(0, state, token))
    produced = 1
    try:
        while True:
            base = decoder.lengths[0]
            verified = decoder.verify([pair])[0]
            engine.draft_stats.drafted += 1
            engine.draft_stats.accepted += verified.accepted
            for index, token in enumerate(verified.ids):
                decoder.settle(0, base + 1 + index)  # the state holds every yielded id but the last
                yield token
                produced += 1
                if token in stop or produced == max_new_tokens:
                    return
            pair = verified.next_pair
    finally:
        decoder.store_row(0, state)


def batch_speculative(engine: SpeculativeEngine, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                      stop: Sequence[int]) -> list[list[int]]:
    """Greedy continuations of several prompts, one verify step for all rows at a time, each row
    accepting its own drafts (so rows drift apart in position); a row that stops idles."""
    longest = max(len(p) for p in prompts)
    decoder = engine.draft_decoder(len(prompts), longest + max_new_tokens)
    decoder.set_sampling(None)  # the engine's decoder may have sampled last
    engine.draft_stats = DraftStats()
    outputs: list[list[int]] = []
    pairs: list[tuple[int, int]] = []
    for row, prompt in enumerate(prompts):
        state = engine.new_state(len(prompt), draft=True)
        token = int(engine.prefill(prompt, state).argmax())
        outputs.append([token])
        pairs.append((token, decoder.start(row, state, token)))
    active = [ids[0] not in stop and max_new_tokens > 1 for ids in outputs]
    padding = decoder.batch - len(prompts)  # the bucket's spare rows idle
    while any(active):
        results = decoder.verify(pairs + [(0, 0)] * padding, active + [False] * padding)
        for row, verified in enumerate(results[: len(prompts)]):
            if verified is None:
                continue
            engine.draft_stats.drafted += 1
            engine.draft_stats.accepted += verified.accepted
            pairs[row] = verified.next_pair
            for token in verified.ids:
                outputs[row].append(token)
                if token in stop or len(outputs[row]) == max_new_tokens:
                    active[row] = False
                    break
    return outputs
