"""Greedy speculative generation with the MTP draft head: each step verifies one drafted token beside
the token before it, so a held draft yields two ids for one step's weight reads.

Two paths give the ids plain greedy decoding gives: the eager one (Engine.forward on two tokens, the
state marked and rewound on a rejected draft) and the static one (static_verify.py's DraftDecoder: one
CUDA-graphed verify step per draft, rollback free by construction), for one sequence or a batch whose
rows accept independently. Either leaves a given state as plain decoding would: holding the prompt and
every yielded id but the last, its MTP layer following it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .state import DecodeState, mark, rewind
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
    def new_state(self, max_tokens: int | None = None, draft: bool = True) -> DecodeState: ...


def eager_speculative(engine: SpeculativeEngine, prompt_ids: Sequence[int], max_new_tokens: int, stop: Sequence[int],
                      state: DecodeState) -> Iterator[int]:
    """Draft with Engine.draft, verify with one two-token Engine.forward, rewind a rejected draft."""
    if max_new_tokens <= 0:
        return
    engine.draft_stats = DraftStats()
    token = int(engine.prefill(prompt_ids, state).argmax())
    produced = 0
    while True:
        yield token
        produced += 1
        if token in stop or produced == max_new_tokens:
            return
        if state.num_tokens + 2 > state.max_tokens or not engine.has_draft_head:
            token = int(engine.forward([token], state)[-1].argmax())
            continue
        drafted = int(engine.draft(state, token).argmax())
        before = mark(state)
        logits = engine.forward([token, drafted], state)
        verified = int(logits[0].argmax())
        engine.draft_stats.drafted += 1
        if verified != drafted:  # undo the draft: the state must hold only what was yielded
            rewind(state, before)
            engine.forward([token], state)
            token = verified
            continue
        engine.draft_stats.accepted += 1
        yield drafted
        produced += 1
        if drafted in stop or produced == max_new_tokens:
            rewind(state, before)  # leave the state as plain decoding would: without the last id
            engine.forward([token], state)
            return
        token = int(logits[1].argmax())


def static_speculative(engine: SpeculativeEngine, prompt_ids: Sequence[int], max_new_tokens: int, stop: Sequence[int],
                       state: DecodeState) -> Iterator[int]:
    """Verify steps on the engine's draft decoder (1 or 2 ids each) after an eager prefill; the state
    gets the tokens back even when the caller stops early. The caller checks that `state` has room
    for the prompt and `max_new_tokens - 1` more."""
    if max_new_tokens <= 0:
        return
    engine.draft_stats = DraftStats()
    token = int(engine.prefill(prompt_ids, state).argmax())
    yield token
    if token in stop or max_new_tokens == 1:
        return
    decoder = engine.draft_decoder(1, state.num_tokens + max_new_tokens)
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
