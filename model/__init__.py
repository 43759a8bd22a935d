"""model: the DeepSeek V4 engine (config, layers, mHC, attention, MoE, weights).

Data flow: config.py -> layers.py -> mhc.py -> attention.py -> moe.py -> v4.py -> weights.py.
`engine = model.load(path)`; `state = engine.new_state()`; `engine.forward(ids, state)` continues a
sequence; `engine.generate(...)` streams ids. The reference path matches transformers logit for logit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError, EngineConfig, V4Config
from .engine import Engine, EngineInputError, load
from .state import DecodeState
from .v4 import Transformer
from .weights import WeightsError, load_into


def load_transformer(path: str | Path, dtype: torch.dtype = torch.float32, device: str | None = None) -> Transformer:
    """Build the model of the checkpoint at `path` and fill it from its safetensors."""
    path = Path(path)
    config = V4Config.from_json(path)
    model = Transformer(config)
    load_into(model, path, dtype)
    return model.to(device or "cpu").eval()


__all__ = ["ConfigError", "DecodeState", "Engine", "EngineConfig", "EngineInputError", "Transformer", "V4Config",
           "WeightsError", "load", "load_transformer"]
