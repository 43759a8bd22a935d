"""model: the DeepSeek V4 engine (config, layers, mHC, attention, MoE, weights).

Data flow: config.py -> layers.py -> mhc.py -> attention.py -> moe.py -> v4.py -> weights.py.
`engine = model.load(path)`; `state = engine.new_state()`; `engine.forward(ids, state)` continues a
sequence; `engine.generate(...)` streams ids. The reference path matches transformers logit for logit.
"""

if __name__ != "v4.model":  # the folder is also reachable from the repository root: one copy only
    raise ImportError(f"import v4.model, not {__name__} (the packages live in the v4 namespace; see README)")

from .config import ConfigError, EngineConfig, V4Config
from .engine import Engine, EngineInputError, load, load_transformer
from .state import DecodeState
from .v4 import Transformer
from .weights import WeightsError

__all__ = ["ConfigError", "DecodeState", "Engine", "EngineConfig", "EngineInputError", "Transformer", "V4Config",
           "WeightsError", "load", "load_transformer"]
