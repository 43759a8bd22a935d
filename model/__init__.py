"""model: the DeepSeek V4 engine (config, layers, mHC, attention, MoE, weights).

Data flow: config.py -> layers.py -> mhc.py -> attention.py -> moe.py -> v4.py -> weights.py.
The engine API (`load`, decode state, `generate`) is being built (the [engine] issue); so far the
reference prefill path runs whole sequences and matches transformers logit for logit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import ConfigError, EngineConfig, V4Config
from .v4 import Transformer
from .weights import WeightsError, load_into


def load_transformer(path: str | Path, dtype: torch.dtype = torch.float32, device: str | None = None) -> Transformer:
    """Build the model of the checkpoint at `path` and fill it from its safetensors."""
    path = Path(path)
    config = V4Config.from_json(path)
    model = Transformer(config)
    load_into(model, path, dtype)
    return model.to(device or "cpu").eval()


__all__ = ["ConfigError", "EngineConfig", "Transformer", "V4Config", "WeightsError", "load_transformer"]
