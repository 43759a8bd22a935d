"""Speculative decoding in the shape-static decoder: draft with the MTP block (`mtp.0`), verify each
draft in one graphed step that feeds two tokens per row, so both share every weight read (the GEMMs run
2B rows, where a plain step runs B).

A row at position p holds every token before p and knows the token t at p (the last one yielded) and
the MTP block's draft d for p + 1. One verify step:
- feeds [t, d] at p, p + 1 through the main layers (the ring holds window + 1 slots, so d's write never
  evicts a position t's query still sees; each compressor pools t's window before d writes);
- takes v_p, v_{p+1} = argmax of the main logits on the device: v_p is the true token at p + 1, v_{p+1}
  the one at p + 2 if d held;
- runs the MTP block on (streams at p, v_p) and (streams at p + 1, v_{p+1}) at p, p + 1, which drafts
  p + 2 (used if d is rejected) and p + 3 (if accepted);
- the host reads [v_p, v_{p+1}, draft_{p+2}, draft_{p+3}] once (the one sync speculation needs), accepts
  d iff v_p == d and advances the row by 2 (feeding [v_{p+1}, draft_{p+3}] next) or by 1 (feeding
  [v_p, draft_{p+2}] next).
Rolling back a rejection costs nothing: what d wrote at p + 1 (main and MTP layers) is written again by
the next step, which starts at p + 1, and no query sees it before (static_decode.py's invariant). The
MTP layer's entry at position q is always made from the main model's argmax at q, which greedy decoding
holds as the token at q + 1, so the draft head never needs its own correction.

A step is never replayed at its own first position once it ran (its second token may have started a
window whose previous half the first token pools), so the graph is warmed up on inactive rows.

In and out of eager states: `start` loads a prefilled state whose MTP layer follows it (the eager
convention: the MTP layer one position behind, `mtp_pending` the last position's streams) and drafts
the first token; `store_row` writes the row back in the same convention, as plain decoding leaves it.
Greedy only: sampling needs the rejection rule and a draft head fed the sampled token (issue 27).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import FLOAT_KV
from .decode_positions import DecodePositions
from .piecewise_graph import PiecewiseGraph
from .state import DecodeState
from .static_decode import PAGE_TOKENS, StaticDecodeError, StaticDecoder
from .v4 import Transformer


@dataclass(frozen=True, slots=True)
class Verified:
    """One row's verify step: the ids it settled (v_p, then v_{p+1} if the draft held), the pair to
    feed next ([last id, its draft]) and whether the draft held."""

    ids: tuple[int, ...]
    next_pair: tuple[int, int]
    accepted: bool


class DraftDecoder(StaticDecoder):
    """A StaticDecoder whose `verify` steps feed [token, draft] per row and keep the MTP layer's state."""

    def __init__(self, model: Transformer, batch: int, capacity: int, use_graph: bool | None = None,
                 page_tokens: int = PAGE_TOKENS, kv_format: str = FLOAT_KV) -> None:
        if not len(model.mtp):
            raise StaticDecodeError("this model has no MTP block (mtp.*) to draft with")
        self._verify_positions: DecodePositions | None = None
        self._verify_graph: torch.cuda.CUDAGraph | PiecewiseGraph | None = None
        self._verified: Tensor | None = None
        super().__init__(model, batch, capacity + 1, use_graph, page_tokens, kv_format, max_step_tokens=2,
                         mtp_layers=1)
        config = model.config
        self.pairs = torch.zeros(batch, 2, dtype=torch.long, device=self.device)
        # the final streams of each row's last verify step (its two positions), the MTP block's input
        # for the row's last position when it goes back to an eager state; the last row is scratch
        self.streams = torch.zeros(batch + 1, 2, config.hc_mult, config.hidden_size, dtype=self.dtype,
                                   device=self.device)
        self._first = [0] * batch  # each row's last verify position (or, after start, its last token's)
        self._reach = [0] * batch  # the most tokens a row may hold again (`settle`): its length after `verify`

    @property
    def mtp_layer(self) -> int:
        """The MTP block's layer index (config numbering: after the main layers)."""
        return self.config.num_hidden_layers

    def grow(self, capacity: int) -> None:
        held = self.capacity
        super().grow(capacity)
        if self.capacity != held:
            self._verify_positions = self._decode_positions(2)
            self._verify_graph = None

    # ------------------------------------------------------------------ states in and out

    def load_row(self, row: int, state: DecodeState) -> None:
        """Load the main layers, the MTP layer (one position behind) and the pending streams; `start`
        also drafts, which a row needs before its first `verify`."""
        if not state.mtp_layers or state.mtp_pending is None:
            raise StaticDecodeError("the state's draft head must follow it: a new_state(draft=True) fed by "
                                    "Engine.forward, with at least one token")
        super().load_row(row, state)
        n = state.num_tokens
        self._load_layer(row, self.mtp_layer, self.layers[-1], state.mtp_layers[0], n - 1)
        self.streams[row, 0] = state.mtp_pending[0, 0]
        self._first[row], self._reach[row] = n - 1, n

    @torch.no_grad()
    def start(self, row: int, state: DecodeState, next_token: int) -> int:
        """Load `row` from `state` and return the draft for the token after `next_token` (the token the
        state's last position predicted, to be fed first). Runs the MTP block once at the state's last
        position, eagerly: once per sequence."""
        if not 0 <= next_token < self.config.vocab_size:
            raise StaticDecodeError(f"token id {next_token} is out of range [0, {self.config.vocab_size})")
        self.load_row(row, state)
        positions = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        positions[row] = state.num_tokens - 1
        active = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        active[row] = True
        steps = self._positions
        steps.update(positions, active)  # type: ignore[union-attr]
        ids = torch.zeros(self.batch, 1, dtype=torch.long, device=self.device)
        ids[row] = next_token
        logits = self._draft(self.streams[: self.batch, :1], ids, steps)  # type: ignore[arg-type]
        return int(logits[row, 0].argmax())

    def store_row(self, row: int, state: DecodeState) -> None:
        """Write `row` back as plain decoding (Engine.forward) leaves a state: the main layers hold every
        token, the MTP layer all but the last, whose final streams wait in `mtp_pending`."""
        super().store_row(row, state)
        n = self.lengths[row]
        if not state.mtp_layers or n == 0:
            return
        self._store_layer(row, self.mtp_layer, self.layers[-1], state.mtp_layers[0], n - 1)
        state.mtp_pending = self.streams[row, n - 1 - self._first[row]][None, None].clone()

    def settle(self, row: int, length: int) -> None:
        """Let `row` hold `length` tokens, from its last verify step's first token + 1 to what that step
        settled: a caller that stops after the first of two accepted ids drops the second (the next
        step rewrites it; anything older is not kept, so the row goes back no further)."""
        if not self._first[row] + 1 <= length <= self._reach[row]:
            raise StaticDecodeError(f"row {row} can hold {self._first[row] + 1}..{self._reach[row]} tokens, "
                                    f"not {length}")
        self.lengths[row] = length

    # ------------------------------------------------------------------ the verify step

    @torch.no_grad()
    def verify(self, pairs: list[tuple[int, int]] | Tensor, active: list[bool] | None = None) -> list[Verified | None]:
        """Feed [token, draft] per row at each row's position and the next; per active row what it
        settled (None for inactive rows, which write nothing). Active rows advance by 1 or 2."""
        active = list(active) if active is not None else [True] * self.batch
        ids = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2)
        if ids.shape[0] != self.batch or len(active) != self.batch:
            raise StaticDecodeError(f"verify takes {self.batch} pairs and flags, got {ids.shape[0]} and {len(active)}")
        vocab = self.config.vocab_size
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise StaticDecodeError(f"token ids must be in [0, {vocab})")
        self.grow(max(self.lengths) + 2)
        self.pairs.copy_(ids)
        self.positions.copy_(torch.tensor(self.lengths, dtype=torch.long))
        self.active.copy_(torch.tensor(active, dtype=torch.bool))
        settled = self._run_verify().tolist()  # the step's one sync
        drafts = ids[:, 1].tolist()
        results: list[Verified | None] = []
        for row, on in enumerate(active):
            if not on:
                results.append(None)
                continue
            now, after, redraft, draft = settled[row]
            accepted = now == drafts[row]
            self._first[row] = self.lengths[row]
            self.lengths[row] = self._reach[row] = self.lengths[row] + (2 if accepted else 1)
            results.append(Verified((now, after), (after, draft), True) if accepted
                           else Verified((now,), (now, redraft), False))
        return results

    def _run_verify(self) -> Tensor:
        if not self.use_graph:
            return self._verify_forward()
        if self._verify_graph is None:
            held = self.active.clone()
            self.active.fill_(False)  # warm up writing nothing: a step must not run twice at one position
            try:
                self._verify_graph, self._verified = self._capture(self._verify_forward)
            finally:
                self.active.copy_(held)
        self._verify_graph.replay()
        return self._verified  # type: ignore[return-value]

    def replay_verify(self) -> Tensor:
        """Run the captured verify step again on the current inputs (the benchmark times this alone)."""
        self._verify_graph.replay()  # type: ignore[union-attr]
        return self._verified  # type: ignore[return-value]

    def _verify_forward(self) -> Tensor:
        """[v_p, v_{p+1}, draft_{p+2}, draft_{p+3}] `[B, 4]` int64 for the pairs at `positions`."""
        steps = self._verify_positions
        steps.update(self.positions, self.active)  # type: ignore[union-attr]
        streams = self._main(self.pairs, steps)  # type: ignore[arg-type]
        verified = self.model.logits(streams).argmax(dim=-1)  # [B, 2]
        self.streams[steps.write_rows] = streams  # type: ignore[union-attr]
        drafts = self._draft(streams, verified, steps).argmax(dim=-1)  # type: ignore[arg-type]
        return torch.cat([verified, drafts], dim=1)

    def _draft(self, streams: Tensor, next_ids: Tensor, steps: DecodePositions) -> Tensor:
        """The MTP block on the main streams `[B, T, hc, hidden]` and the tokens after them `[B, T]` at
        the positions of `steps`: logits `[B, T, vocab]` of the tokens two after."""
        block, model = self.model.mtp[0], self.model
        x = block.inputs(streams, next_ids, model.embed)
        out = block.mix(x, next_ids, lambda h: self._attend(block.attn, h, self.layers[-1], steps))
        return block.logits(out, model.head)
