"""Engram: conditional memory by hashed n-gram lookup (DeepSeek, "Conditional Memory via Scalable
Lookup", 2026; reference demo `engram_demo_v1.py` in deepseek-ai/Engram).

At position t the suffix n-grams (n = 2..N) of *compressed* token ids (a surjective raw -> canonical
id map, `vocab_map`) are hashed by K heads each into prime-sized tables; the (N-1)*K rows are
concatenated into `e_t`. Each mHC stream m gates the shared value `W_V e_t` by how well its hidden
state agrees with its own key `W_K^(m) e_t`, and a short causal depthwise convolution (dilation N)
refines the result:

    a = RMSNorm(h^m) . RMSNorm(k^m) / sqrt(D);   alpha = sigmoid(sign(a) * sqrt(|a|))
    v~ = alpha * v;                              Y = SiLU(Conv1D(RMSNorm(v~))) + v~

The caller adds Y to the streams. Addressing follows the demo exactly (numpy-seeded odd multipliers
per layer and n-gram position, XOR-mixed, modulo distinct primes searched upwards from the table
size across all Engram layers in order), so a checkpoint trained with it reads the same rows.

Parameters (checkpoint names under `layers.{i}.engram.`), with E = (N-1) * n_embed_per_ngram:
    embed.weight          [sum of the (N-1)*K table sizes, n_embed_per_ngram // K]: every (n, k)
                          table stacked, n outer, k inner (the demo's `multi_head_embedding`)
    key_proj.weight       [M*D, E] and key_proj.bias [M*D]: rows m*D:(m+1)*D are stream m's W_K
    value_proj.weight     [D, E] and value_proj.bias [D]: W_V, shared by the streams
                          (the biases exist only when `bias`, as the demo's nn.Linear has them)
    key_norm.weight, hidden_norm.weight, conv_norm.weight
                          [M, D] float32: one RMSNorm per stream, for k^m, h^m and the conv input
    conv.weight           [M*D, 1, kernel_size]: depthwise, channel m*D + d (nn.Conv1d layout)
    vocab_map             [vocab_size] int64 buffer, only with `compressed_vocab_size` (else identity)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_LAYER_SEED_STRIDE = 10007  # the demo's per-layer seed offset (PRIME_1)
_INT64_MAX = int(np.iinfo(np.int64).max)

_KEYS = {  # field -> config.json key
    "layer_ids": "engram_layer_ids", "max_ngram_size": "engram_max_ngram_size",
    "n_embed_per_ngram": "engram_n_embed_per_ngram", "n_head_per_ngram": "engram_n_head_per_ngram",
    "table_size": "engram_table_size", "kernel_size": "engram_kernel_size",
    "compressed_vocab_size": "engram_compressed_vocab_size", "pad_id": "engram_pad_id",
    "seed": "engram_seed", "bias": "engram_bias", "conv_eps": "engram_conv_eps",
}
ENGRAM_KEYS: frozenset[str] = frozenset(_KEYS.values())


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class EngramConfig:
    """Engram hyper-parameters shared by every Engram layer (defaults are the demo's).

    `table_size` is each n-gram order's base table size (one int for all orders, or one per order
    n = 2..N as the demo's `engram_vocab_size` list); the K heads of an order use the next distinct
    primes above it. `pad_id` is a raw token id (compressed like the rest) standing in for positions
    before the sequence start; `conv_eps` is the conv input norm's eps (the demo's ShortConv uses 1e-5).
    """

    layer_ids: tuple[int, ...]
    max_ngram_size: int = 3
    n_embed_per_ngram: int = 512
    n_head_per_ngram: int = 8
    table_size: int | tuple[int, ...] = 129280 * 5
    kernel_size: int = 4
    compressed_vocab_size: int | None = None
    pad_id: int = 0
    seed: int = 0
    bias: bool = True
    conv_eps: float = 1e-5

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"config key {_KEYS[name]}: {why}, got {getattr(self, name)!r}")

        if not isinstance(self.layer_ids, tuple) or not all(_is_int(i) and i >= 0 for i in self.layer_ids):
            raise bad("layer_ids", "must be a list of non-negative layer indices")
        if len(set(self.layer_ids)) != len(self.layer_ids):
            raise bad("layer_ids", "must not repeat a layer")
        for name, least in (("max_ngram_size", 2), ("n_embed_per_ngram", 1), ("n_head_per_ngram", 1),
                            ("kernel_size", 1), ("pad_id", 0), ("seed", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < least:
                raise bad(name, f"must be an integer >= {least}")
        if self.n_embed_per_ngram % self.n_head_per_ngram:
            raise bad("n_embed_per_ngram", f"must be a multiple of engram_n_head_per_ngram ({self.n_head_per_ngram})")
        sizes = self.table_size if isinstance(self.table_size, tuple) else (self.table_size,)
        if not all(_is_int(s) and s > 0 for s in sizes) or (
                isinstance(self.table_size, tuple) and len(sizes) != self.max_ngram_size - 1):
            raise bad("table_size", "must be a positive integer or one per n-gram order 2..max_ngram_size")
        if self.compressed_vocab_size is not None and (not _is_int(self.compressed_vocab_size)
                                                       or self.compressed_vocab_size < 1):
            raise bad("compressed_vocab_size", "must be a positive integer or null")
        if not isinstance(self.bias, bool):
            raise bad("bias", "must be true or false")
        if isinstance(self.conv_eps, bool) or not isinstance(self.conv_eps, (int, float)) or not self.conv_eps > 0:
            raise bad("conv_eps", "must be a positive number")

    @property
    def table_sizes(self) -> tuple[int, ...]:
        """Base table size of each n-gram order 2..N."""
        if isinstance(self.table_size, tuple):
            return self.table_size
        return (self.table_size,) * (self.max_ngram_size - 1)

    @classmethod
    def from_dict(cls, data: dict) -> EngramConfig | None:
        """The `engram_*` keys of a config.json; None when `engram_layer_ids` is absent or empty."""
        if not data.get("engram_layer_ids"):
            return None
        values = {name: data[key] for name, key in _KEYS.items() if key in data}
        for name in ("layer_ids", "table_size"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        if not isinstance(values["layer_ids"], tuple):
            raise ValueError(f"config key engram_layer_ids: must be a list of layer indices, "
                             f"got {values['layer_ids']!r}")
        return cls(**values)


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin (exact for n < 3.3e24, far beyond any table size)."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    if n in small:
        return True
    if any(n % p == 0 for p in small):
        return False
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@functools.lru_cache(maxsize=None)
def layer_table_sizes(config: EngramConfig) -> dict[int, tuple[tuple[int, ...], ...]]:
    """Prime table size of every (layer, order n, head k): `{layer: ((M_{2,1}..M_{2,K}), ...)}`.

    As in the demo, each head takes the smallest prime above the previous head's (the first above
    `table_size - 1`) that no earlier layer, order or head took, layers in `layer_ids` order: all
    tables get distinct prime sizes, so the heads' collisions are independent."""
    seen: set[int] = set()
    sizes = {}
    for layer in config.layer_ids:
        orders = []
        for base in config.table_sizes:
            heads, candidate = [], base - 1
            for _ in range(config.n_head_per_ngram):
                candidate += 1
                while candidate in seen or not _is_prime(candidate):
                    candidate += 1
                seen.add(candidate)
                heads.append(candidate)
            orders.append(tuple(heads))
        sizes[layer] = tuple(orders)
    return sizes


def hash_multipliers(config: EngramConfig, layer_id: int, hash_vocab_size: int) -> tuple[int, ...]:
    """The layer's odd multipliers, one per n-gram position (shared by all orders and heads).

    Drawn as the demo does (numpy `default_rng(seed + 10007 * layer)`), below `int64 max //
    hash_vocab_size` so that `id * multiplier` cannot overflow int64 for any compressed id."""
    half_bound = max(1, _INT64_MAX // hash_vocab_size // 2)
    rng = np.random.default_rng(config.seed + _LAYER_SEED_STRIDE * layer_id)
    draws = rng.integers(0, half_bound, size=config.max_ngram_size, dtype=np.int64)
    return tuple(2 * int(r) + 1 for r in draws)


def ngram_hashes(ids: torch.Tensor, multipliers: torch.Tensor, moduli: torch.Tensor) -> torch.Tensor:
    """Per-head row of every suffix n-gram: `[B, T, (N-1)*K]` (n outer, k inner), each in `[0, M_{n,k})`.

    `ids` `[B, N-1+T]` are compressed ids whose first N-1 columns are the context before the T
    positions hashed (pad ids at the sequence start); `multipliers` `[N]`, `moduli` `[(N-1)*K]`.
    The n-gram ending at t mixes `x_{t-j} * multipliers[j]` for j < n by XOR."""
    context = multipliers.numel() - 1
    length = ids.shape[1] - context
    heads = moduli.numel() // context
    mix, out = None, []
    for j in range(context + 1):
        term = ids[:, context - j: context - j + length] * multipliers[j]
        mix = term if mix is None else torch.bitwise_xor(mix, term)
        if j >= 1:  # order n = j + 1 is complete
            mods = moduli[(j - 1) * heads: j * heads]
            out.append(torch.remainder(mix.unsqueeze(-1), mods))
    return torch.cat(out, dim=-1)


@dataclass(slots=True)
class EngramState:
    """What one Engram layer must remember to continue a sequence: the last N-1 *raw* token ids
    `[B, N-1]` (pad_id before the start; compressed on use, which is the same as storing compressed
    ids), the last `(kernel_size-1) * N` conv inputs (the normalised gated values) `[B, P, M, D]`
    (zeros before the start: the conv's causal padding), and the number of tokens fed so far."""

    tokens: torch.Tensor
    conv: torch.Tensor
    num_tokens: int = 0


def new_engram_state(config: EngramConfig, batch: int, hc_mult: int, hidden_size: int,
                     dtype: torch.dtype, device: torch.device | str) -> EngramState:
    """A state for a sequence not yet started."""
    tokens = torch.full((batch, config.max_ngram_size - 1), config.pad_id, dtype=torch.long, device=device)
    conv = torch.zeros(batch, (config.kernel_size - 1) * config.max_ngram_size, hc_mult, hidden_size,
                       dtype=dtype, device=device)
    return EngramState(tokens, conv)


class StreamNorm(nn.Module):
    """One RMSNorm per mHC stream (weight `[M, D]`, float32), computed in float32 like RMSNorm."""

    def __init__(self, hc_mult: int, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hc_mult, dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[..., M, D]` -> float32 `[..., M, D]` (callers cast once where they need to)."""
        x32 = x.float()
        return self.weight.float() * (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + self.eps))


class Engram(nn.Module):
    """One layer's Engram; `forward` returns what to add to the streams."""

    def __init__(self, config: EngramConfig, layer_id: int, vocab_size: int, hidden_size: int, hc_mult: int,
                 eps: float = 1e-6) -> None:
        super().__init__()
        if layer_id not in config.layer_ids:
            raise ValueError(f"layer {layer_id} is not in engram_layer_ids {list(config.layer_ids)}")
        if config.pad_id >= vocab_size:
            raise ValueError(f"config key engram_pad_id: {config.pad_id} is not below vocab_size {vocab_size}")
        self.config, self.layer_id, self.hc_mult, self.hidden_size = config, layer_id, hc_mult, hidden_size
        self.table_device: torch.device | None = None
        heads = config.n_head_per_ngram
        self.vocab_size = vocab_size
        multipliers, moduli, offsets = self._addressing()
        self.register_buffer("multipliers", multipliers, persistent=False)
        self.register_buffer("moduli", moduli, persistent=False)
        self.register_buffer("offsets", offsets, persistent=False)
        sizes = [size for order in layer_table_sizes(config)[layer_id] for size in order]
        if config.compressed_vocab_size is None:
            self.register_buffer("vocab_map", None)
        else:  # placeholder (the checkpoint supplies it), kept inside the compressed range
            self.register_buffer("vocab_map", torch.arange(vocab_size).clamp_max(config.compressed_vocab_size - 1))
        memory = (config.max_ngram_size - 1) * config.n_embed_per_ngram
        self.embed = nn.Embedding(sum(sizes), config.n_embed_per_ngram // heads)
        self.key_proj = nn.Linear(memory, hc_mult * hidden_size, bias=config.bias)
        self.value_proj = nn.Linear(memory, hidden_size, bias=config.bias)
        self.key_norm = StreamNorm(hc_mult, hidden_size, eps)
        self.hidden_norm = StreamNorm(hc_mult, hidden_size, eps)
        self.conv_norm = StreamNorm(hc_mult, hidden_size, config.conv_eps)
        channels = hc_mult * hidden_size
        self.conv = nn.Conv1d(channels, channels, config.kernel_size, groups=channels, bias=False,
                              dilation=config.max_ngram_size)

    def _addressing(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hash multipliers, table sizes, table offsets): derived from the config, never stored."""
        sizes = [s for order in layer_table_sizes(self.config)[self.layer_id] for s in order]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        hash_vocab = self.config.compressed_vocab_size or self.vocab_size
        multipliers = hash_multipliers(self.config, self.layer_id, hash_vocab)
        return torch.tensor(multipliers), torch.tensor(sizes), torch.tensor(offsets)

    def materialize_buffers(self, device: torch.device | str) -> None:
        """Recompute the addressing buffers (a model built on the meta device has none)."""
        with torch.device("cpu"):
            multipliers, moduli, offsets = self._addressing()
        self.multipliers, self.moduli, self.offsets = multipliers.to(device), moduli.to(device), offsets.to(device)

    def place_tables(self, device: torch.device | str) -> None:
        """Keep the embedding table on `device` (e.g. host memory) from now on.

        Later `.to()` / `.cuda()` / `.half()` calls on any parent leave the table where and as it is;
        lookups gather rows on the table's device and move only those rows to the streams."""
        self.table_device = torch.device(device)
        self.embed.to(self.table_device)

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001, ANN202 (nn.Module's signature)
        if self.table_device is None or not recurse:
            return super()._apply(fn, recurse)
        for name, child in self.named_children():
            if name != "embed":
                child._apply(fn)
        return super()._apply(fn, recurse=False)

    def rows(self, token_ids: torch.Tensor, state: EngramState | None = None) -> torch.Tensor:
        """Rows of `embed.weight` each position reads: `[B, S, (N-1)*K]` int64.

        Depends on the token ids alone, so it can be computed ahead (to prefetch from host memory)."""
        context = self._context_tokens(token_ids, state)
        ids = torch.cat([context.to(token_ids.device), token_ids.long()], dim=1)
        if self.vocab_map is not None:
            ids = self.vocab_map[ids]
        return ngram_hashes(ids, self.multipliers, self.moduli) + self.offsets

    def _context_tokens(self, token_ids: torch.Tensor, state: EngramState | None) -> torch.Tensor:
        if state is not None:
            return state.tokens
        return token_ids.new_full((token_ids.shape[0], self.config.max_ngram_size - 1), self.config.pad_id,
                                  dtype=torch.long)

    def forward(self, streams: torch.Tensor, token_ids: torch.Tensor, state: EngramState | None = None) -> torch.Tensor:
        """The Engram output `[B, S, M, D]` for `streams` `[B, S, M, D]` and `token_ids` `[B, S]`;
        continues from `state` and advances it when given."""
        batch, length, hc_mult, dim = streams.shape
        if (hc_mult, dim) != (self.hc_mult, self.hidden_size) or tuple(token_ids.shape) != (batch, length):
            raise ValueError(f"Engram expects streams [B, S, {self.hc_mult}, {self.hidden_size}] and token ids "
                             f"[B, S], got {tuple(streams.shape)} and {tuple(token_ids.shape)}")
        if state is not None and state.tokens.shape[0] != batch:
            raise ValueError(f"Engram state is for batch {state.tokens.shape[0]}, the input has batch {batch}")
        dtype = streams.dtype
        table = self.embed.weight
        rows = self.rows(token_ids, state)
        memory = F.embedding(rows.to(table.device), table).to(streams.device, dtype).flatten(2)  # e_t: [B, S, E]
        keys = self._project(memory, self.key_proj).unflatten(-1, (hc_mult, dim))
        values = self._project(memory, self.value_proj)
        score = (self.hidden_norm(streams) * self.key_norm(keys)).sum(-1) / math.sqrt(dim)
        gate = torch.sigmoid(score.sign() * score.abs().clamp_min(1e-6).sqrt())  # the demo's signed sqrt
        gated = gate.to(dtype).unsqueeze(-1) * values.unsqueeze(2)  # [B, S, M, D]
        normed = self.conv_norm(gated).to(dtype)
        past = self._past_conv_inputs(state, batch, streams)
        window = torch.cat([past, normed], dim=1).flatten(2).transpose(1, 2)  # [B, M*D, P + S]
        mixed = F.conv1d(window, self.conv.weight.to(dtype), dilation=self.conv.dilation, groups=window.shape[1])
        out = F.silu(mixed.transpose(1, 2).unflatten(-1, (hc_mult, dim))) + gated
        if state is not None:
            self._advance(state, token_ids, past, normed)
        return out

    @staticmethod
    def _project(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
        weight = linear.weight
        bias = None if linear.bias is None else linear.bias.to(weight.dtype)  # loaders keep biases float32
        return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)

    def _past_conv_inputs(self, state: EngramState | None, batch: int, streams: torch.Tensor) -> torch.Tensor:
        if state is not None:
            return state.conv.to(streams.device, streams.dtype)
        span = (self.config.kernel_size - 1) * self.config.max_ngram_size
        return streams.new_zeros(batch, span, self.hc_mult, self.hidden_size)

    @staticmethod
    def _advance(state: EngramState, token_ids: torch.Tensor, past: torch.Tensor, normed: torch.Tensor) -> None:
        """Keep the last N-1 token ids and the last P conv inputs, in the state's own tensors."""
        context = state.tokens.shape[1]
        tokens = torch.cat([state.tokens, token_ids.to(state.tokens.device, torch.long)], dim=1)
        state.tokens.copy_(tokens[:, tokens.shape[1] - context:])
        span = state.conv.shape[1]
        if span:
            conv = torch.cat([past, normed], dim=1)
            state.conv.copy_(conv[:, conv.shape[1] - span:])
        state.num_tokens += token_ids.shape[1]
