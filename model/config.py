"""V4Config: a DeepSeek V4 checkpoint's `config.json`, checked key by key; EngineConfig: how we run it.

The fields are the HuggingFace keys, spelled the same, with V4-Flash's values as defaults, so loading
is a key check plus a constructor call. Older checkpoints ship legacy keys (`compress_ratios`,
`compress_rate_csa`/`_hca`, `num_hash_layers`, `qk_rope_head_dim`, `rope_scaling`); `from_dict` folds
them into the modern fields the way transformers' `DeepseekV4Config` does, so both name the same model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .engram import ENGRAM_KEYS, EngramConfig

SLIDING, CSA, HCA = "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"
LAYER_TYPES = (SLIDING, CSA, HCA)
COMPRESS_RATIO_TO_LAYER_TYPE = {0: SLIDING, 4: CSA, 128: HCA}
DEFAULT_COMPRESS_RATES = {CSA: 4, HCA: 128}
HASH_MOE, MOE = "hash_moe", "moe"
MLP_LAYER_TYPES = (HASH_MOE, MOE)
DEFAULT_NUM_HASH_LAYERS = 3
SCORING_FUNCS = ("sqrtsoftplus", "softmax", "sigmoid")
FLOAT_KV, FP8_KV = "float", "fp8"
KV_FORMATS = (FLOAT_KV, FP8_KV)  # how a decode state stores compressed entries and indexer keys

# Keys transformers writes that say nothing about the model's computation.
IGNORED_KEYS = frozenset({
    "_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype", "auto_map",
    "use_cache", "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id",
    "problem_type", "is_encoder_decoder", "chunk_size_feed_forward", "initializer_range",
    "attention_dropout", "output_router_logits", "router_aux_loss_coef", "router_jitter_noise",
    "tokenizer_class", "model_type",
})
LEGACY_KEYS = frozenset({"compress_ratios", "compress_rate_csa", "compress_rate_hca", "num_hash_layers",
                         "qk_rope_head_dim", "rope_scaling", "topk_method"})
# V4 routes by the top-k of score + correction bias with no group limit: DeepSeek-V3's "noaux_tc", the
# value V4-Flash's config.json ships (checked, not silently dropped).
TOPK_METHOD = "noaux_tc"


class ConfigError(ValueError):
    """A config.json that does not describe a DeepSeek V4 model we can build; names the key."""


@dataclass(slots=True)
class V4Config:
    """DeepSeek V4 model hyper-parameters (HF `config.json` keys; defaults are V4-Flash).

    Groups: sizes; attention (q low-rank, shared KV, grouped output, sliding window, RoPE); the
    compressed layers (CSA/HCA rates, lightning indexer); mHC residual streams; MoE.
    """

    # sizes
    vocab_size: int = 129280
    hidden_size: int = 4096
    num_hidden_layers: int = 43
    rms_norm_eps: float = 1.0e-6
    max_position_embeddings: int = 1048576
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None
    # attention
    num_attention_heads: int = 64
    num_key_value_heads: int = 1
    head_dim: int = 512
    q_lora_rank: int = 1024
    o_groups: int = 8
    o_lora_rank: int = 1024
    sliding_window: int = 128
    attention_bias: bool = False
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    partial_rotary_factor: float | None = None
    rope_parameters: dict | None = None
    # compressed layers and the lightning indexer
    layer_types: list[str] | None = None
    compress_rates: dict | None = None
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    # mHC
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1.0e-6
    # MoE
    mlp_layer_types: list[str] | None = None
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 6
    moe_intermediate_size: int = 2048
    scoring_func: str = "sqrtsoftplus"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.5
    swiglu_limit: float = 10.0
    hidden_act: str = "silu"
    mlp_bias: bool = False
    num_nextn_predict_layers: int = 1
    mtp_layer_types: list[str] | None = None  # ours: the MTP blocks' attention (compress_ratios' tail)
    quantization_config: dict | None = None
    expert_dtype: str | None = None  # DeepSeek's flag for FP4 routed experts ("fp4"); weights say it too
    # derived in __post_init__
    qk_rope_head_dim: int = field(init=False, default=0)
    engram: EngramConfig | None = field(init=False, default=None)  # from the engram_* keys

    def __post_init__(self) -> None:
        _check_types(self)
        n = self.num_hidden_layers
        if self.compress_rates is None:
            self.compress_rates = dict(DEFAULT_COMPRESS_RATES)
        if self.layer_types is None:  # transformers' default schedule: 2 HCA, then CSA/HCA alternating
            self.layer_types = [HCA] * min(n, 2) + [CSA if i % 2 else HCA for i in range(max(n - 2, 0))]
        if self.mlp_layer_types is None:
            hashed = min(n, DEFAULT_NUM_HASH_LAYERS)
            self.mlp_layer_types = [HASH_MOE] * hashed + [MOE] * (n - hashed)
        if self.mtp_layer_types is None:  # V4-Flash's compress_ratios end with 0: a sliding MTP layer
            self.mtp_layer_types = [SLIDING] * self.num_nextn_predict_layers
        if self.partial_rotary_factor is None:
            self.partial_rotary_factor = 64 / 512
        self.qk_rope_head_dim = round(self.head_dim * self.partial_rotary_factor)
        if self.rope_parameters is None or not {"main", "compress"} <= set(self.rope_parameters):
            self.rope_parameters = _nested_rope(self.rope_parameters or {}, self)
        self._validate()

    def _validate(self) -> None:
        n = self.num_hidden_layers
        for name, types, allowed, count in (
                ("layer_types", self.layer_types, LAYER_TYPES, n),
                ("mlp_layer_types", self.mlp_layer_types, MLP_LAYER_TYPES, n),
                ("mtp_layer_types", self.mtp_layer_types, LAYER_TYPES, self.num_nextn_predict_layers)):
            if len(types) != count:
                what = "num_hidden_layers" if count == n else "num_nextn_predict_layers"
                raise ConfigError(f"{name} has {len(types)} entries but {what} is {count}")
            bad = sorted({t for t in types if t not in allowed})
            if bad:
                raise ConfigError(f"{name}: unknown layer types {bad}; expected {list(allowed)}")
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim",
                    "q_lora_rank", "o_groups", "o_lora_rank", "sliding_window", "index_n_heads", "index_head_dim",
                    "index_topk", "hc_mult", "hc_sinkhorn_iters", "n_routed_experts", "num_experts_per_tok",
                    "moe_intermediate_size"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive, got {getattr(self, key)}")
        if self.num_key_value_heads != 1:
            raise ConfigError(f"num_key_value_heads must be 1 (V4 shares one K=V vector), got {self.num_key_value_heads}")
        if self.num_attention_heads % self.o_groups:
            raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) is not a multiple of o_groups ({self.o_groups})")
        if not 0 < self.qk_rope_head_dim <= self.head_dim or self.qk_rope_head_dim % 2:
            raise ConfigError(f"partial_rotary_factor {self.partial_rotary_factor} gives a RoPE size of "
                              f"{self.head_dim * self.partial_rotary_factor} of head_dim {self.head_dim}: "
                              "it must be an even whole number no larger than head_dim")
        if self.num_experts_per_tok > self.n_routed_experts:
            raise ConfigError(f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds n_routed_experts "
                              f"({self.n_routed_experts})")
        if self.scoring_func not in SCORING_FUNCS:
            raise ConfigError(f"scoring_func must be one of {list(SCORING_FUNCS)}, got {self.scoring_func!r}")
        for layer_type in (CSA, HCA):
            rate = self.compress_rates.get(layer_type)
            if layer_type in self.layer_types and (not isinstance(rate, int) or rate <= 0):
                raise ConfigError(f"compress_rates[{layer_type!r}] must be a positive integer, got {rate!r}")

    @property
    def num_hash_layers(self) -> int:
        """Leading layers that route by `tid2eid[token_id]` instead of by score."""
        return sum(1 for t in self.mlp_layer_types if t == HASH_MOE)

    def attention_type(self, layer: int) -> str:
        """The attention of `layer`; layers from num_hidden_layers on are the MTP blocks."""
        n = self.num_hidden_layers
        return self.layer_types[layer] if layer < n else self.mtp_layer_types[layer - n]

    def mlp_type(self, layer: int) -> str:
        """Hash-routed or score-routed MoE; MTP blocks route by score."""
        return self.mlp_layer_types[layer] if layer < self.num_hidden_layers else MOE

    def compress_rate(self, layer: int) -> int:
        """Tokens per compressed entry in `layer` (0: a sliding-window-only layer)."""
        layer_type = self.attention_type(layer)
        return 0 if layer_type == SLIDING else self.compress_rates[layer_type]

    @classmethod
    def from_dict(cls, data: dict, warn: Callable[[str], None] | None = None) -> V4Config:
        """Check `data` (a parsed config.json) and build the config; legacy keys are folded in.

        An unknown key is reported once through `warn` (future checkpoints add keys; none is dropped
        silently). A missing `model_type`, another model type, or a wrongly typed value is a ConfigError.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        if data.get("model_type") != "deepseek_v4":
            raise ConfigError(f"model_type must be 'deepseek_v4', got {data.get('model_type')!r}")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known - IGNORED_KEYS - LEGACY_KEYS - ENGRAM_KEYS)
        if unknown and warn is not None:
            warn(f"config.json: ignoring unknown keys {unknown}")
        kwargs = {k: v for k, v in data.items() if k in known}
        num_layers = kwargs.get("num_hidden_layers", _default("num_hidden_layers"))
        ratios = data.get("compress_ratios")
        if ratios is not None and kwargs.get("layer_types") is None:
            mtp = data.get("num_nextn_predict_layers", _default("num_nextn_predict_layers"))
            if not isinstance(ratios, list) or len(ratios) not in (num_layers, num_layers + mtp):
                raise ConfigError(f"compress_ratios must list one ratio per layer ({num_layers}, or "
                                  f"{num_layers + mtp} with the MTP layers), got {ratios!r}")
            unknown_ratios = sorted({r for r in ratios if r not in COMPRESS_RATIO_TO_LAYER_TYPE})
            if unknown_ratios:
                raise ConfigError(f"compress_ratios: unsupported ratios {unknown_ratios}; "
                                  f"expected {sorted(COMPRESS_RATIO_TO_LAYER_TYPE)}")
            kwargs["layer_types"] = [COMPRESS_RATIO_TO_LAYER_TYPE[r] for r in ratios[:num_layers]]
            if len(ratios) > num_layers and kwargs.get("mtp_layer_types") is None:
                kwargs["mtp_layer_types"] = [COMPRESS_RATIO_TO_LAYER_TYPE[r] for r in ratios[num_layers:]]
        rates = dict(kwargs.get("compress_rates") or DEFAULT_COMPRESS_RATES)
        for key, layer_type in (("compress_rate_csa", CSA), ("compress_rate_hca", HCA)):
            if key in data:
                rates[layer_type] = data[key]
        kwargs["compress_rates"] = rates
        if "num_hash_layers" in data and kwargs.get("mlp_layer_types") is None:
            hashed = data["num_hash_layers"]
            if not isinstance(hashed, int) or not 0 <= hashed <= num_layers:
                raise ConfigError(f"num_hash_layers must be an integer in [0, {num_layers}], got {hashed!r}")
            kwargs["mlp_layer_types"] = [HASH_MOE] * hashed + [MOE] * (num_layers - hashed)
        if "qk_rope_head_dim" in data and kwargs.get("partial_rotary_factor") is None:
            head_dim = kwargs.get("head_dim", _default("head_dim"))
            kwargs["partial_rotary_factor"] = data["qk_rope_head_dim"] / head_dim
        if data.get("topk_method", TOPK_METHOD) != TOPK_METHOD:
            raise ConfigError(f"topk_method must be {TOPK_METHOD!r} (V4's routing), got {data['topk_method']!r}")
        if "rope_scaling" in data and kwargs.get("rope_parameters") is None:
            kwargs["rope_parameters"] = data["rope_scaling"]
        config = cls(**kwargs)
        try:
            config.engram = EngramConfig.from_dict(data)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if config.engram is not None:
            beyond = [i for i in config.engram.layer_ids if i >= config.num_hidden_layers]
            if beyond:
                raise ConfigError(f"engram_layer_ids {beyond} are not layers of a {config.num_hidden_layers}-layer model")
        return config

    @classmethod
    def from_json(cls, path: str | Path, warn: Callable[[str], None] | None = None) -> V4Config:
        """Read `path` (a config.json, or a checkpoint directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            data = json.loads(path.read_text("utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, warn)


def _default(name: str) -> object:
    """A field's default (slots dataclasses keep descriptors, not defaults, on the class)."""
    return next(f.default for f in dataclasses.fields(V4Config) if f.name == name)


def _nested_rope(flat: dict, config: V4Config) -> dict:
    """`{"main": ..., "compress": ...}`: sliding layers use plain RoPE at `rope_theta`; compressed
    layers use `compress_rope_theta` with the checkpoint's scaling (YaRN), without YaRN's mscale."""
    scaling = {k: v for k, v in flat.items() if k not in ("main", "compress")}
    main = {"rope_type": "default", "rope_theta": config.rope_theta,
            "partial_rotary_factor": config.partial_rotary_factor}
    compress = {**scaling, "rope_theta": config.compress_rope_theta,
                "partial_rotary_factor": config.partial_rotary_factor}
    compress["rope_type"] = compress.get("rope_type", compress.get("type", "default"))
    if compress["rope_type"] == "yarn":
        compress.setdefault("attention_factor", 1.0)
        for key in ("factor", "original_max_position_embeddings"):
            if key not in compress:
                raise ConfigError(f"rope_parameters: YaRN needs {key!r}")
    return {"main": main, "compress": compress}


def _check_types(config: V4Config) -> None:
    hints = typing.get_type_hints(V4Config)
    for f in dataclasses.fields(config):
        if f.init and not _is_instance(getattr(config, f.name), hints[f.name]):
            raise ConfigError(f"{f.name} must be {_type_name(hints[f.name])}, got {getattr(config, f.name)!r}")


def _is_instance(value: object, hint: object) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    return isinstance(value, origin or hint)


def _type_name(hint: object) -> str:
    if isinstance(hint, type):
        return "None" if hint is type(None) else hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


@dataclass(slots=True)
class EngineConfig:
    """How the engine runs a model (not what the model is): kept apart from V4Config, as nano-vllm
    keeps its Config apart from the HF config."""

    max_seq_len: int = 1_048_576
    max_batch_size: int = 1
    dtype: str = "bfloat16"
    device: str | None = None  # None: CUDA when available, else CPU
    enforce_eager: bool = False
    engram_table_device: str | None = None  # e.g. "cpu": Engram tables in host memory, the rest on `device`
    # "float": decode states keep entries and indexer keys in `dtype`; "fp8": DeepSeek's layout (584-byte
    # e4m3 + bf16 RoPE rows, e4m3 indexer keys with a scale each), ~1.8x smaller, keys FP8-rounded
    kv_format: str = FLOAT_KV
    offload_experts: int | None = None  # routed experts in host memory, this many per layer cached on `device`
    # GPU memory (GiB) the engine may use: weights placed by model/offload_plan.py (None: what is free, on CUDA)
    gpu_memory_gb: float | None = None
    # torch threads of a CPU engine (None: `default_cpu_threads()`); CUDA engines leave torch's setting alone
    cpu_threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_seq_len <= 0 or self.max_batch_size <= 0:
            raise ConfigError(f"max_seq_len and max_batch_size must be positive, got {self.max_seq_len}, "
                              f"{self.max_batch_size}")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ConfigError(f"dtype must be bfloat16, float16 or float32, got {self.dtype!r}")
        if self.kv_format not in KV_FORMATS:
            raise ConfigError(f"kv_format must be one of {list(KV_FORMATS)}, got {self.kv_format!r}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ConfigError(f"cpu_threads must be at least 1, got {self.cpu_threads}")
        if self.offload_experts is not None and self.offload_experts < 2:
            raise ConfigError(f"offload_experts is the GPU slots per MoE layer (at least 2), got {self.offload_experts}")
        if self.gpu_memory_gb is not None and not self.gpu_memory_gb > 0:
            raise ConfigError(f"gpu_memory_gb is the GPU memory the engine may use (GiB > 0), got {self.gpu_memory_gb}")
        if self.gpu_memory_gb is not None and self.offload_experts is not None:
            raise ConfigError("offload_experts fixes the experts per layer on the GPU and gpu_memory_gb plans them: "
                              "give one")


def context_length(config: V4Config, engine: EngineConfig | None = None) -> int:
    """The model's context, the one number every command reports (`v4 model info`, `v4 serve`, the
    TUI, `v4 refactor --json`): the positions the checkpoint covers (`max_position_embeddings`),
    within the engine's `max_seq_len`. A session or server may use less on purpose (on a CPU) and then
    names both numbers."""
    return min(config.max_position_embeddings, (engine or EngineConfig()).max_seq_len)
