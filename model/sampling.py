"""How ids are drawn from logits: plain nucleus sampling (`sample`) and speculative sampling's rejection
rule (Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding"; Chen et al.
2023, "Accelerating LLM Decoding with Speculative Sampling").

The rule: a draft token d drawn from the draft head's distribution q is kept with probability
min(1, p(d) / q(d)), p being the target model's distribution; a rejected draft is replaced by a sample of
normalize(max(0, p - q)). Whatever q is, the token that comes out is distributed as p exactly, so
speculative sampling draws what plain sampling draws. p and q are both `processed`: the temperature and
top-p cut `sample` applies, or the output would follow some other distribution than plain sampling's.

The rule's functions work batched on device tensors (`[B, vocab]`) with their randomness passed in
(`StepNoise`: a uniform per row, exponential noise per token), so a CUDA graph holds them with the noise
written into its input buffers before each replay, and nothing waits for the host. A categorical draw
is an exponential race, argmax(w / E) with E ~ Exp(1), which picks i with probability w_i / sum(w) for
any non-negative w, normalised or not (gpt-fast samples the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

FIRST_STREAM, STEP_STREAM = 0, 1  # Sampling.generator's streams: the first id's, every later draw's
_STREAM_STRIDE = 0x9E3779B97F4A7C15  # seeds of different streams lie far apart (2^64 / golden ratio)


@dataclass(frozen=True, slots=True)
class Sampling:
    """Speculative sampling's settings: `sample`'s temperature and top_p, and the seed of its noise."""

    temperature: float
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"sampling needs a temperature > 0, got {self.temperature} (0 is greedy decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def generator(self, device: torch.device | str, stream: int) -> torch.Generator:
        """A generator of its own for each stream, seeded from `seed` (FIRST_STREAM: `seed` itself, as plain
        `generate` seeds, so the first id is the one plain sampling draws): the eager path and the graphed
        one draw the same noise from the same streams in the same order, so they yield the same ids."""
        generator = torch.Generator(device=device)
        generator.manual_seed((self.seed + stream * _STREAM_STRIDE) % 2**64)
        return generator


@dataclass(frozen=True, slots=True)
class StepNoise:
    """One verify step's randomness, per row: `uniform` `[B]` decides acceptance; `target` `[B, vocab]`
    draws the id the target model settles (the residual sample if the draft is rejected, the bonus id
    after it if accepted: never both, so one noise serves both); `draft` `[B, vocab]` draws the next
    draft (from the MTP block's q at one position or the next: only the one kept is ever used)."""

    uniform: Tensor
    target: Tensor
    draft: Tensor

    @classmethod
    def empty(cls, batch: int, vocab: int, device: torch.device | str) -> StepNoise:
        """Buffers to `draw` into (a graph's static inputs)."""
        return cls(*(torch.empty(shape, dtype=torch.float32, device=device)
                     for shape in ((batch,), (batch, vocab), (batch, vocab))))

    def draw(self, generator: torch.Generator) -> None:
        """Fill the buffers in place, always in this order (uniform, target, draft)."""
        self.uniform.uniform_(generator=generator)
        self.target.exponential_(generator=generator)
        self.draft.exponential_(generator=generator)


def processed(logits: Tensor, temperature: float | Tensor, top_p: float | Tensor = 1.0) -> Tensor:
    """The distribution `sample` draws from, normalised: softmax(logits / temperature) `[..., vocab]`
    float32, cut to the smallest most likely set whose mass reaches `top_p`. A float top_p of 1 skips
    the cut; a tensor top_p (a graph's input) always cuts."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if not isinstance(top_p, Tensor) and top_p >= 1.0:
        return probs
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # the mass before each token is short of top_p
    kept = torch.zeros_like(probs).scatter_(-1, order, torch.where(keep, sorted_probs, 0.0))
    return kept / kept.sum(-1, keepdim=True)


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token id from `logits` `[vocab]`: argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    return int(torch.multinomial(processed(logits, temperature, top_p), 1, generator=generator))


def draw(weights: Tensor, noise: Tensor) -> Tensor:
    """An index per row of `weights` `[..., vocab]` (non-negative, not all zero, normalised or not): i
    with probability w_i / sum(w), given `noise` E ~ Exp(1) of the same shape. The race argmax(w / E);
    E is kept off 0, where a zero weight would tie with infinity."""
    return (weights / noise.clamp_min(torch.finfo(noise.dtype).tiny)).argmax(dim=-1)


def residual(target: Tensor, draft: Tensor) -> Tensor:
    """What a rejected draft is replaced from: max(0, p - q) `[B, vocab]`, unnormalised. It is all zero
    only where p == q, where every draft is accepted; p stands in there, so it is always drawable."""
    left = (target - draft).clamp_min(0.0)
    return torch.where(left.sum(-1, keepdim=True) > 0, left, target)


def accept_or_resample(target: Tensor, draft_probs: Tensor, draft: Tensor, uniform: Tensor,
                       noise: Tensor) -> tuple[Tensor, Tensor]:
    """The rejection rule for one drafted id per row.

    Args:
        target: p `[B, vocab]` float32, the target model's processed distribution at the drafted position.
        draft_probs: q `[B, vocab]` float32, the processed distribution `draft` was drawn from.
        draft: d `[B]` int64.
        uniform: u `[B]` in [0, 1); d is kept iff u * q(d) < p(d), i.e. with probability min(1, p(d) / q(d)).
            (q(d) = 0 cannot happen for a d drawn from q; it would keep d wherever p(d) > 0.)
        noise: E `[B, vocab]` ~ Exp(1), for the residual sample.

    Returns:
        accepted `[B]` bool, and the id settled at the drafted position `[B]` int64: d where accepted,
        else a sample of normalize(max(0, p - q)). It is distributed as p.
    """
    at = draft[:, None]
    accepted = uniform * draft_probs.gather(-1, at)[:, 0] < target.gather(-1, at)[:, 0]
    return accepted, torch.where(accepted, draft, draw(residual(target, draft_probs), noise))
