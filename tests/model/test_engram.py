"""Engram against the paper's equations written out loop by loop, chunked == whole, host-held tables,
the hash's properties and the config keys."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from v4.model.engram import (
    ENGRAM_KEYS, Engram, EngramConfig, hash_multipliers, layer_table_sizes, new_engram_state, ngram_hashes,
)

VOCAB, HIDDEN = 50, 16
COMPRESSED = EngramConfig(layer_ids=(1, 3), max_ngram_size=3, n_embed_per_ngram=8, n_head_per_ngram=2,
                          table_size=(31, 37), kernel_size=4, compressed_vocab_size=40, pad_id=2, seed=7)
PLAIN = EngramConfig(layer_ids=(0,), max_ngram_size=4, n_embed_per_ngram=6, n_head_per_ngram=3,
                     table_size=23, kernel_size=2, bias=False, conv_eps=1e-6)
CASES = [(COMPRESSED, 3, 3), (PLAIN, 0, 2)]  # (config, layer, hc_mult)


def _engram(config: EngramConfig, layer: int, hc_mult: int, seed: int = 0) -> Engram:
    """An Engram with every parameter and the vocab map random."""
    module = Engram(config, layer, VOCAB, HIDDEN, hc_mult)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.named_parameters():
            scale = 0.5 if name.endswith("norm.weight") or name.endswith("bias") else tensor.shape[-1] ** -0.5
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale
                         + (1.0 if name.endswith("norm.weight") else 0.0))
        if module.vocab_map is not None:
            module.vocab_map.copy_(torch.randint(0, config.compressed_vocab_size, (VOCAB,), generator=generator))
    return module


def _inputs(batch: int, length: int, hc_mult: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, length, hc_mult, HIDDEN, generator=generator),
            torch.randint(0, VOCAB, (batch, length), generator=generator))


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * x / torch.sqrt(x.square().mean() + eps)


def _reference(module: Engram, streams: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The paper's Engram, one position, n-gram order, head, stream and conv tap at a time, in float64."""
    config, p = module.config, {k: v.double() for k, v in module.state_dict().items() if v.is_floating_point()}
    order, heads, kernel = config.max_ngram_size, config.n_head_per_ngram, config.kernel_size
    multipliers = hash_multipliers(config, module.layer_id, config.compressed_vocab_size or VOCAB)
    sizes = layer_table_sizes(config)[module.layer_id]
    vocab_map = module.vocab_map
    batch, length, hc_mult, dim = streams.shape
    streams = streams.double()

    def canonical(b: int, t: int) -> int:
        raw = int(token_ids[b, t]) if t >= 0 else config.pad_id
        return raw if vocab_map is None else int(vocab_map[raw])

    gated = torch.zeros(batch, length, hc_mult, dim, dtype=torch.float64)
    for b in range(batch):
        for t in range(length):
            rows, offset = [], 0
            for n in range(2, order + 1):
                mix = 0
                for j in range(n):  # x_{t-j} * multiplier_j, XOR-ed (Python ints: no overflow possible)
                    mix ^= canonical(b, t - j) * multipliers[j]
                for k in range(heads):
                    rows.append(p["embed.weight"][offset + mix % sizes[n - 2][k]])
                    offset += sizes[n - 2][k]
            memory = torch.cat(rows)
            value = p["value_proj.weight"] @ memory + (p["value_proj.bias"] if config.bias else 0)
            for m in range(hc_mult):
                key = p["key_proj.weight"][m * dim:(m + 1) * dim] @ memory
                if config.bias:
                    key = key + p["key_proj.bias"][m * dim:(m + 1) * dim]
                h = _rms_norm(streams[b, t, m], p["hidden_norm.weight"][m], module.hidden_norm.eps)
                k_ = _rms_norm(key, p["key_norm.weight"][m], module.key_norm.eps)
                a = float(h @ k_) / math.sqrt(dim)
                a = math.copysign(math.sqrt(max(abs(a), 1e-6)), a)
                gated[b, t, m] = value / (1 + math.exp(-a))
    out = torch.zeros_like(gated)
    for b in range(batch):
        for t in range(length):
            for m in range(hc_mult):
                conv = torch.zeros(dim, dtype=torch.float64)
                for i in range(kernel):  # tap i reads position t - (kernel-1-i) * dilation, zero before the start
                    source = t - (kernel - 1 - i) * order
                    if source >= 0:
                        normed = _rms_norm(gated[b, source, m], p["conv_norm.weight"][m], config.conv_eps)
                        conv += p["conv.weight"][m * dim:(m + 1) * dim, 0, i] * normed
                out[b, t, m] = conv * torch.sigmoid(conv) + gated[b, t, m]
    return out


@pytest.mark.parametrize(("config", "layer", "hc_mult"), CASES)
def test_matches_the_equations(config: EngramConfig, layer: int, hc_mult: int) -> None:
    module = _engram(config, layer, hc_mult)
    streams, ids = _inputs(2, 20, hc_mult)
    with torch.no_grad():
        ours = module(streams, ids)
    theirs = _reference(module, streams, ids)
    assert ours.shape == streams.shape and ours.dtype == torch.float32
    error = ((ours.double() - theirs).abs().max() / theirs.abs().max()).item()
    assert error < 1e-5, error


@pytest.mark.parametrize(("config", "layer", "hc_mult"), CASES)
def test_chunks_through_a_state_equal_one_call(config: EngramConfig, layer: int, hc_mult: int) -> None:
    module = _engram(config, layer, hc_mult)
    chunks = [5, 1, 1, 13, 1, 3]
    streams, ids = _inputs(2, sum(chunks), hc_mult, seed=2)
    state = new_engram_state(config, 2, hc_mult, HIDDEN, torch.float32, "cpu")
    outputs, start = [], 0
    with torch.no_grad():
        whole = module(streams, ids)
        for size in chunks:
            outputs.append(module(streams[:, start:start + size], ids[:, start:start + size], state))
            start += size
    torch.testing.assert_close(torch.cat(outputs, dim=1), whole, rtol=1e-6, atol=1e-6)
    assert state.num_tokens == sum(chunks)
    assert torch.equal(state.tokens, ids[:, -(config.max_ngram_size - 1):])


def test_state_must_match_the_batch() -> None:
    module = _engram(COMPRESSED, 1, 3)
    streams, ids = _inputs(2, 4, 3)
    with pytest.raises(ValueError, match="batch"):
        module(streams, ids, new_engram_state(COMPRESSED, 1, 3, HIDDEN, torch.float32, "cpu"))


def test_tables_placed_apart_stay_put_and_give_the_same_output() -> None:
    """A float32 host table under a bfloat16 module reads exactly what a bfloat16 table would."""
    module = _engram(COMPRESSED, 3, 3)
    pinned = copy.deepcopy(module)
    pinned.place_tables("cpu")
    pinned.to(torch.bfloat16)
    assert pinned.embed.weight.dtype == torch.float32
    assert pinned.key_proj.weight.dtype == torch.bfloat16 and pinned.conv.weight.dtype == torch.bfloat16
    plain = copy.deepcopy(module).to(torch.bfloat16)
    streams, ids = _inputs(2, 12, 3)
    with torch.no_grad():
        ours = pinned(streams.bfloat16(), ids)
        theirs = plain(streams.bfloat16(), ids)
        full = module(streams, ids)
    assert ours.dtype == torch.bfloat16
    assert torch.equal(ours, theirs)
    assert ((ours.float() - full).abs().max() / full.abs().max()).item() < 0.05  # bfloat16 rounding only

    on_meta = copy.deepcopy(pinned).to("meta")
    assert on_meta.embed.weight.device.type == "cpu" and on_meta.key_proj.weight.device.type == "meta"
    assert "embed.weight" in on_meta.state_dict()


def test_parameter_names_and_shapes() -> None:
    module = Engram(COMPRESSED, 1, VOCAB, HIDDEN, 3)
    rows = sum(sum(order) for order in layer_table_sizes(COMPRESSED)[1])
    memory = 2 * 8
    assert {name: tuple(t.shape) for name, t in module.state_dict().items()} == {
        "vocab_map": (VOCAB,), "embed.weight": (rows, 4),
        "key_proj.weight": (3 * HIDDEN, memory), "key_proj.bias": (3 * HIDDEN,),
        "value_proj.weight": (HIDDEN, memory), "value_proj.bias": (HIDDEN,),
        "key_norm.weight": (3, HIDDEN), "hidden_norm.weight": (3, HIDDEN), "conv_norm.weight": (3, HIDDEN),
        "conv.weight": (3 * HIDDEN, 1, 4),
    }
    assert "vocab_map" not in Engram(PLAIN, 0, VOCAB, HIDDEN, 2).state_dict()
    with pytest.raises(ValueError, match="layer 2"):
        Engram(COMPRESSED, 2, VOCAB, HIDDEN, 3)


# --- the hash ----------------------------------------------------------------------------------------


def _is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, math.isqrt(n) + 1))


def test_table_sizes_are_distinct_primes_from_the_base_size() -> None:
    config = EngramConfig(layer_ids=(1, 15))  # the demo's defaults: 646400 per order, 8 heads
    sizes = layer_table_sizes(config)
    flat = [s for layer in (1, 15) for order in sizes[layer] for s in order]
    assert len(flat) == 2 * 2 * 8 and len(set(flat)) == len(flat)
    assert all(_is_prime(s) and s >= 129280 * 5 for s in flat)
    assert sizes[1][0][0] == next(n for n in range(129280 * 5, 10**7) if _is_prime(n))  # first prime >= base
    assert layer_table_sizes(config) == layer_table_sizes(EngramConfig(layer_ids=(1, 15)))


def test_multipliers_are_odd_deterministic_per_layer_and_cannot_overflow() -> None:
    first = hash_multipliers(COMPRESSED, 1, 40)
    assert first == hash_multipliers(COMPRESSED, 1, 40) and len(first) == 3
    assert first != hash_multipliers(COMPRESSED, 3, 40)
    assert first != hash_multipliers(EngramConfig(layer_ids=(1, 3), seed=8), 1, 40)
    for vocab in (40, 129280):
        multipliers = hash_multipliers(COMPRESSED, 1, vocab)
        assert all(m % 2 == 1 and 0 < m and m * (vocab - 1) <= 2**63 - 1 for m in multipliers)


def test_hash_indexes_in_range_distinct_per_head_and_exact_at_the_largest_ids() -> None:
    vocab = 129280
    multipliers = torch.tensor(hash_multipliers(COMPRESSED, 3, vocab))
    moduli = torch.tensor([1000003, 1000033, 999983, 1000037])  # orders 2, 3 x 2 heads
    ids = torch.randint(0, vocab, (3, 64), generator=torch.Generator().manual_seed(3))
    ids[0] = vocab - 1  # the largest products
    rows = ngram_hashes(ids, multipliers, moduli)
    assert rows.shape == (3, 62, 4)
    assert bool((rows >= 0).all()) and bool((rows < moduli).all())
    assert torch.equal(rows, ngram_hashes(ids.clone(), multipliers, moduli))
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.equal(rows[..., a], rows[..., b])
    m = multipliers.tolist()
    for b, t in ((0, 0), (0, 61), (1, 17), (2, 40)):  # Python integers as the ground truth
        x = [int(ids[b, t + 2 - j]) for j in range(3)]
        bigram, trigram = (x[0] * m[0]) ^ (x[1] * m[1]), (x[0] * m[0]) ^ (x[1] * m[1]) ^ (x[2] * m[2])
        assert rows[b, t].tolist() == [bigram % 1000003, bigram % 1000033, trigram % 999983, trigram % 1000037]


def test_positions_before_the_start_read_the_compressed_pad_id() -> None:
    module = _engram(COMPRESSED, 1, 3)
    _, ids = _inputs(2, 10, 3)
    context = COMPRESSED.max_ngram_size - 1
    padded = torch.cat([torch.full((2, context), COMPRESSED.pad_id), ids], dim=1)
    rows = module.rows(ids)
    assert torch.equal(rows, module.rows(padded)[:, context:])
    with torch.no_grad():  # the pad goes through the vocab map like any token
        module.vocab_map[COMPRESSED.pad_id] = (module.vocab_map[COMPRESSED.pad_id] + 1) % 40
    moved = module.rows(ids)
    assert not torch.equal(moved[:, :context], rows[:, :context])
    assert torch.equal(moved[:, context:], rows[:, context:]) or bool((ids == COMPRESSED.pad_id).any())


# --- the config --------------------------------------------------------------------------------------


def test_config_from_dict() -> None:
    data = {"engram_layer_ids": [1, 15], "engram_max_ngram_size": 4, "engram_n_embed_per_ngram": 256,
            "engram_n_head_per_ngram": 4, "engram_table_size": [1000, 2000, 3000], "engram_kernel_size": 3,
            "engram_compressed_vocab_size": 99000, "engram_pad_id": 2, "engram_seed": 5, "engram_bias": False,
            "engram_conv_eps": 1e-6, "hidden_size": 4096}
    config = EngramConfig.from_dict(data)
    assert config == EngramConfig((1, 15), 4, 256, 4, (1000, 2000, 3000), 3, 99000, 2, 5, False, 1e-6)
    assert config.table_sizes == (1000, 2000, 3000)
    assert EngramConfig.from_dict({"engram_layer_ids": [2], "engram_table_size": 7}).table_sizes == (7, 7)
    assert ENGRAM_KEYS == {k for k in data if k.startswith("engram_")}
    assert EngramConfig.from_dict({"hidden_size": 4096}) is None
    assert EngramConfig.from_dict({"engram_layer_ids": []}) is None
    assert EngramConfig.from_dict({"engram_layer_ids": None}) is None


@pytest.mark.parametrize(("key", "value"), [
    ("engram_layer_ids", [-1]), ("engram_layer_ids", [1, 1]), ("engram_layer_ids", "1"),
    ("engram_layer_ids", [1.5]), ("engram_max_ngram_size", 1), ("engram_table_size", 0),
    ("engram_table_size", -7), ("engram_table_size", [10, 20, 30]), ("engram_n_embed_per_ngram", 10),
    ("engram_n_head_per_ngram", 0), ("engram_kernel_size", True), ("engram_pad_id", -1),
    ("engram_compressed_vocab_size", 0), ("engram_seed", -1), ("engram_bias", 1), ("engram_conv_eps", 0),
])
def test_config_rejects_bad_values_naming_the_key(key: str, value: object) -> None:
    data = {"engram_layer_ids": [1], "engram_n_embed_per_ngram": 8, "engram_n_head_per_ngram": 4, key: value}
    with pytest.raises(ValueError, match=key):
        EngramConfig.from_dict(data)
