"""Engine: a loaded V4 model with the API other packages use (`new_state`, `forward`, `generate`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .config import EngineConfig
from .state import DecodeState, new_decode_state
from .v4 import Transformer

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class EngineInputError(ValueError):
    """Token ids or a state the engine cannot use."""


class Engine:
    """The model, its engine settings and tokenizer; states continue sequences token by token."""

    def __init__(self, model: Transformer, config: EngineConfig, tokenizer: object | None = None) -> None:
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.id = uuid.uuid4().hex

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed.weight.dtype

    def new_state(self, max_tokens: int | None = None) -> DecodeState:
        """An empty state for up to `max_tokens` (default: the engine's max_seq_len) tokens."""
        limit = min(self.config.max_seq_len, self.model.config.max_position_embeddings)
        return new_decode_state(self.model.config, max_tokens or limit, self.id, self.dtype, self.device)

    @torch.no_grad()
    def forward(self, token_ids: Sequence[int] | torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Feed `token_ids`, continuing `state`; logits `[len(token_ids), vocab]` float32.

        Raises:
            EngineInputError: an empty or out-of-range id, a state of another engine, or a state full.
        """
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device).reshape(-1)
        vocab = self.model.config.vocab_size
        if ids.numel() == 0:
            raise EngineInputError("no token ids to feed")
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise EngineInputError(f"token ids must be in [0, {vocab}); got {int(ids.min())}..{int(ids.max())}")
        if state.owner != self.id:
            raise EngineInputError("this state was made by another engine (other weights): make one with new_state()")
        if state.num_tokens + ids.numel() > state.max_tokens:
            raise EngineInputError(f"the state holds {state.max_tokens} tokens; {state.num_tokens} are used and "
                                   f"{ids.numel()} more were given")
        return self.model(ids[None], state)[0]

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, stop: Sequence[int] = (), state: DecodeState | None = None,
                 seed: int | None = None) -> Iterator[int]:
        """Stream up to `max_new_tokens` ids after `prompt_ids` (greedy at temperature 0); a stop id ends
        the stream after it is yielded. `state`, if given, is continued and left holding the sequence."""
        state = state or self.new_state()
        generator = torch.Generator(device=self.device)
        if seed is not None:
            generator.manual_seed(seed)
        logits = self.forward(prompt_ids, state)[-1]
        for _ in range(max_new_tokens):
            token = sample(logits, temperature, top_p, generator)
            yield token
            if token in stop:
                return
            logits = self.forward([token], state)[-1]


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token id from `logits` `[vocab]`: argmax at temperature 0, else nucleus sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # the smallest prefix reaching top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def load(path: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
         **engine_options: object) -> Engine:
    """The engine of the checkpoint directory at `path` (config.json, safetensors, optional tokenizer.json).

    `device` defaults to CUDA when available; `dtype` to bfloat16 on CUDA and float32 on CPU.
    """
    from dataclasses import fields

    from .config import V4Config
    from .weights import load_into

    path = Path(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    dtype_name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    allowed = {f.name for f in fields(EngineConfig)}
    unknown = sorted(set(engine_options) - allowed)
    if unknown:
        raise TypeError(f"unknown engine options {unknown}; expected some of {sorted(allowed)}")
    config = EngineConfig(dtype=dtype_name, device=str(device), **engine_options)  # type: ignore[arg-type]
    model = Transformer(V4Config.from_json(path))
    load_into(model, path, DTYPES[config.dtype])
    model = model.to(device).eval()
    return Engine(model, config, _tokenizer(path))


def _tokenizer(path: Path) -> object | None:
    file = path / "tokenizer.json"
    if not file.exists():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(file))
