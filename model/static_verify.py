"""Speculative decoding in the shape-static decoder: draft with the MTP block (`mtp.0`), verify each
draft in one graphed step that feeds two tokens per row, so both share every weight read (the GEMMs run
2B rows, where a plain step runs B).

A row at position p holds every token before p and knows the token t at p (the last one yielded) and
the MTP block's draft d for p + 1. One verify step:
- feeds [t, d] at p, p + 1 through the main layers (the ring holds window + 1 slots, so d's write never
  evicts a position t's query still sees; each compressor pools t's window before d writes);
- settles, on the device, x_{p+1} (the token at p + 1, whatever d was) and x_{p+2} (the one at p + 2, if
  d held) from the main logits. Greedy: x = argmax at p and p + 1, and d held iff x_{p+1} == d.
  Sampling (`set_sampling`): the rejection rule of sampling.py on the processed distributions, p from
  the main logits at p and q kept from when d was drawn: d held with probability min(1, p(d) / q(d)),
  x_{p+1} = d if it held, else a sample of normalize(max(0, p - q)); x_{p+2} = a sample of the main
  logits at p + 1 (the bonus token);
- runs the MTP block on (streams at p, x_{p+1}) and (streams at p + 1, x_{p+2}) at p, p + 1, which drafts
  p + 2 (used if d is rejected) and p + 3 (if accepted): argmax, or drawn from its processed q, which is
  kept (of the draft the row keeps) for the next step's rule;
- the host reads [x_{p+1}, x_{p+2}, draft_{p+2}, draft_{p+3}] (and, sampling, whether d held) once (the
  one sync speculation needs) and advances the row by 2 (feeding [x_{p+2}, draft_{p+3}] next) or by 1
  (feeding [x_{p+1}, draft_{p+2}] next).
Rolling back a rejection costs nothing: what d wrote at p + 1 (main and MTP layers) is written again by
the next step, which starts at p + 1, and no query sees it before (static_decode.py's invariant). The
MTP layer's entry at position q is always made from the token the row holds at q + 1: x_{p+1} is the
token at p + 1 whether d held or not (greedy: the argmax; sampling: d or the residual sample), and
x_{p+2} is the token at p + 2 whenever that entry survives (d held). So the draft head never needs its
own correction, and a draft is always drawn from the MTP block's distribution given the settled tokens.

A step is never replayed at its own first position once it ran (its second token may have started a
window whose previous half the first token pools), so the graph is warmed up on inactive rows.

States: `start` loads a prefilled state whose MTP layer follows it (the eager convention: the MTP layer
one position behind, `mtp_pending` the last position's streams) and drafts the first token
(`first_drafts` drafts for several loaded rows at once); `store_row` leaves the row in the same
convention, as plain decoding leaves it. The layout is the eager one (state.py), so a decoder over the
state (`state=`) moves nothing and a batched one copies rows.

Sampling's randomness is drawn from the generator of `set_sampling`'s seed into static buffers before
each step (sampling.StepNoise), so the step stays one graph; the greedy and sampling steps are two
graphs (sampling with a top-p cut a third), each captured when first used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import FLOAT_KV
from .decode_positions import DecodePositions
from .piecewise_graph import PiecewiseGraph
from .sampling import STEP_STREAM, Sampling, StepNoise, accept_or_resample, draw, processed
from .state import DecodeState
from .static_decode import PAGE_TOKENS, StaticDecodeError, StaticDecoder
from .v4 import Transformer


@dataclass(frozen=True, slots=True)
class Verified:
    """One row's verify step: the ids it settled (x_{p+1}, then x_{p+2} if the draft held), the pair to
    feed next ([last id, its draft]) and whether the draft held."""

    ids: tuple[int, ...]
    next_pair: tuple[int, int]
    accepted: bool


@dataclass(slots=True)
class _SamplingBuffers:
    """The sampling verify step's inputs beside the pairs: the settings as device scalars (read at each
    replay), each row's q (what its pending draft was drawn from) and the step's noise."""

    temperature: Tensor  # [] float32
    top_p: Tensor  # [] float32
    draft_probs: Tensor  # [B, vocab] float32
    noise: StepNoise


class DraftDecoder(StaticDecoder):
    """A StaticDecoder whose `verify` steps feed [token, draft] per row and keep the MTP layer's state."""

    def __init__(self, model: Transformer, batch: int, capacity: int, use_graph: bool | None = None,
                 page_tokens: int = PAGE_TOKENS, kv_format: str = FLOAT_KV, *, state: DecodeState | None = None) -> None:
        if not len(model.mtp):
            raise StaticDecodeError("this model has no MTP block (mtp.*) to draft with")
        self._verify_positions: DecodePositions | None = None
        # the captured verify steps by mode (greedy, sample, nucleus) and their outputs
        self._verify_graphs: dict[str, tuple[torch.cuda.CUDAGraph | PiecewiseGraph, Tensor]] = {}
        super().__init__(model, batch, capacity + 1, use_graph, page_tokens, kv_format, max_step_tokens=2,
                         mtp_layers=1, state=state)
        batch = self.batch
        config = model.config
        self.pairs = torch.zeros(batch, 2, dtype=torch.long, device=self.device)
        # the final streams of each row's last verify step (its two positions), the MTP block's input
        # for the row's last position when it goes back to an eager state; the last row is scratch
        self.streams = torch.zeros(batch + 1, 2, config.hc_mult, config.hidden_size, dtype=self.dtype,
                                   device=self.device)
        self._first = [0] * batch  # each row's last verify position (or, after start, its last token's)
        self._reach = [0] * batch  # the most tokens a row may hold again (`settle`): its length after `verify`
        self.sampling: Sampling | None = None  # None: greedy
        self._sampled: _SamplingBuffers | None = None  # made at the first set_sampling
        self._generator: torch.Generator | None = None

    def grow(self, capacity: int) -> None:
        held = self.capacity
        super().grow(capacity)
        if self.capacity != held:
            self._verify_positions = self._decode_positions(2)
            self._verify_graphs = {}

    # ------------------------------------------------------------------ states in and out

    def load_row(self, row: int, state: DecodeState) -> None:
        """Load the main layers, the MTP layer (one position behind) and the pending streams; `start`
        also drafts, which a row needs before its first `verify`."""
        if not state.mtp_layers or state.mtp_pending is None:
            raise StaticDecodeError("the state's draft head must follow it: a new_state(draft=True) fed by "
                                    "Engine.forward, with at least one token")
        super().load_row(row, state)
        n = state.num_tokens
        self.streams[row, 0] = state.mtp_pending[0, 0]
        self._first[row], self._reach[row] = n - 1, n

    def set_sampling(self, sampling: Sampling | None) -> None:
        """Verify by the rejection rule with `sampling`'s temperature, top_p and seeded noise, or (None)
        greedily. Set it before `start`: the first drafts are drawn under it."""
        self.sampling = sampling
        if sampling is None:
            return
        if self._sampled is None:
            scalar = lambda: torch.ones((), dtype=torch.float32, device=self.device)  # noqa: E731
            vocab = self.config.vocab_size
            self._sampled = _SamplingBuffers(scalar(), scalar(), torch.zeros(self.batch, vocab, device=self.device),
                                             StepNoise.empty(self.batch, vocab, self.device))
        self._sampled.temperature.fill_(sampling.temperature)
        self._sampled.top_p.fill_(sampling.top_p)
        self._generator = sampling.generator(self.device, STEP_STREAM)

    @torch.no_grad()
    def start(self, row: int, state: DecodeState, next_token: int) -> int:
        """Load `row` from `state` and return the draft for the token after `next_token` (the token the
        state's last position predicted, to be fed first). Runs the MTP block once at the state's last
        position, eagerly: once per sequence."""
        self._check_tokens([next_token])
        self.load_row(row, state)
        return self.first_drafts([row], [next_token])[0]

    @torch.no_grad()
    def first_drafts(self, rows: list[int], next_tokens: list[int]) -> list[int]:
        """`start`'s draft for each of `rows` (loaded with `load_row`) and its next token, in one run of
        the MTP block for all of them; when sampling, drawn from q, which the row keeps."""
        self._check_tokens(next_tokens)
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        positions = torch.zeros(self.batch, dtype=torch.long, device=self.device)
        positions[index] = torch.tensor([self.lengths[row] - 1 for row in rows], device=self.device)
        active = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        active[index] = True
        steps = self._positions
        steps.update(positions, active)  # type: ignore[union-attr]
        ids = torch.zeros(self.batch, 1, dtype=torch.long, device=self.device)
        ids[index, 0] = torch.tensor(next_tokens, dtype=torch.long, device=self.device)
        logits = self._draft(self.streams[: self.batch, :1], ids, steps)[index, 0]  # type: ignore[arg-type]
        if self.sampling is None:
            return logits.argmax(dim=-1).tolist()
        sampled = self._buffers
        for row in rows:
            sampled.noise.draft[row].exponential_(generator=self._generator)
        draft_probs = self._processed(logits)
        sampled.draft_probs[index] = draft_probs
        return draw(draft_probs, sampled.noise.draft[index]).tolist()

    def _check_tokens(self, token_ids: list[int]) -> None:
        vocab = self.config.vocab_size
        for token in token_ids:
            if not 0 <= token < vocab:
                raise StaticDecodeError(f"token id {token} is out of range [0, {vocab})")

    def store_row(self, row: int, state: DecodeState) -> None:
        """Write `row` back as plain decoding (Engine.forward) leaves a state: the main layers hold every
        token, the MTP layer all but the last, whose final streams wait in `mtp_pending`."""
        super().store_row(row, state)
        n = self.lengths[row]
        if not state.mtp_layers or n == 0:
            return
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
        settled (None for inactive rows, which write nothing). Active rows advance by 1 or 2. When
        sampling, each draft must be the one the decoder drew last for its row (`next_pair`, `start`):
        the rule reads the q it was drawn from."""
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
        if self.sampling is not None:
            self._buffers.noise.draw(self._generator)  # type: ignore[arg-type]
        settled = self._run_verify().tolist()  # the step's one sync
        drafts = ids[:, 1].tolist()
        results: list[Verified | None] = []
        for row, on in enumerate(active):
            if not on:
                results.append(None)
                continue
            now, after, redraft, draft = settled[row][:4]
            accepted = bool(settled[row][4]) if self.sampling is not None else now == drafts[row]
            self._first[row] = self.lengths[row]
            self.lengths[row] = self._reach[row] = self.lengths[row] + (2 if accepted else 1)
            results.append(Verified((now, after), (after, draft), True) if accepted
                           else Verified((now,), (now, redraft), False))
        return results

    @property
    def _mode(self) -> str:
        """Which verify step runs (each its own graph): greedy, sample, or nucleus (sampling with a top-p cut)."""
        if self.sampling is None:
            return "greedy"
        return "nucleus" if self.sampling.top_p < 1 else "sample"

    def _run_verify(self) -> Tensor:
        if not self.use_graph:
            return self._verify_forward()
        if self._mode not in self._verify_graphs:
            held = self.active.clone()
            self.active.fill_(False)  # warm up writing nothing: a step must not run twice at one position
            try:
                self._verify_graphs[self._mode] = self._capture(self._verify_forward)
            finally:
                self.active.copy_(held)
        return self.replay_verify()

    def replay_verify(self) -> Tensor:
        """Run the captured verify step of the current mode again on the current inputs (the benchmark
        times this alone)."""
        graph, settled = self._verify_graphs[self._mode]
        graph.replay()
        return settled

    def _verify_forward(self) -> Tensor:
        """[v_p, v_{p+1}, draft_{p+2}, draft_{p+3}] `[B, 4]` int64 for the pairs at `positions` (greedy;
        sampling: `_verify_sampled`)."""
        if self.sampling is not None:
            return self._verify_sampled()
        steps = self._verify_positions
        steps.update(self.positions, self.active)  # type: ignore[union-attr]
        streams = self._main(self.pairs, steps)  # type: ignore[arg-type]
        verified = self.model.logits(streams).argmax(dim=-1)  # [B, 2]
        self.streams[steps.write_rows] = streams  # type: ignore[union-attr]
        drafts = self._draft(streams, verified, steps).argmax(dim=-1)  # type: ignore[arg-type]
        return torch.cat([verified, drafts], dim=1)

    def _verify_sampled(self) -> Tensor:
        """The sampling step (module docstring): [x_{p+1}, x_{p+2}, draft_{p+2}, draft_{p+3}, accepted]
        `[B, 5]` int64; each active row keeps the q of the draft it will feed next (inactive rows keep theirs)."""
        sampled, steps = self._buffers, self._verify_positions
        assert steps is not None
        steps.update(self.positions, self.active)
        noise = sampled.noise
        streams = self._main(self.pairs, steps)
        target = self._processed(self.model.logits(streams))  # p at p + 1 and p + 2: [B, 2, vocab]
        accepted, settled = accept_or_resample(target[:, 0], sampled.draft_probs, self.pairs[:, 1], noise.uniform,
                                               noise.target)
        bonus = draw(target[:, 1], noise.target)  # kept only where the draft held: the noise is not used twice
        fed = torch.stack([settled, bonus], dim=1)  # the tokens at p + 1 and (if d held) p + 2
        self.streams[steps.write_rows] = streams
        draft_probs = self._processed(self._draft(streams, fed, steps))  # q at p + 2 and p + 3: [B, 2, vocab]
        drafts = draw(draft_probs, noise.draft[:, None])  # one noise: only one of the two drafts is fed
        kept = torch.where(accepted[:, None], draft_probs[:, 1], draft_probs[:, 0])
        sampled.draft_probs.copy_(torch.where(self.active[:, None], kept, sampled.draft_probs))
        return torch.cat([fed, drafts, accepted[:, None].long()], dim=1)

    @property
    def _buffers(self) -> _SamplingBuffers:
        """Sampling's buffers (set_sampling made them)."""
        assert self._sampled is not None, "set_sampling first"
        return self._sampled

    def _processed(self, logits: Tensor) -> Tensor:
        """`logits` as sampling draws from them (sampling.processed; the settings read on the device)."""
        sampled, nucleus = self._buffers, self._mode == "nucleus"
        return processed(logits, sampled.temperature, sampled.top_p if nucleus else 1.0)

    def _draft(self, streams: Tensor, next_ids: Tensor, steps: DecodePositions) -> Tensor:
        """The MTP block on the main streams `[B, T, hc, hidden]` and the tokens after them `[B, T]` at
        the positions of `steps`: logits `[B, T, vocab]` of the tokens two after."""
        block, model = self.model.mtp[0], self.model
        x = block.inputs(streams, next_ids, model.embed)
        layer = len(self.layers) - 1
        out = block.mix(x, next_ids, lambda h: self._attend(block.attn, h, self.layers[layer], steps, layer))
        return block.logits(out, model.head)
