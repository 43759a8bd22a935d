"""model/decode_positions.py: a step's indices from the kernels (interpreted) equal the torch path's, and
updating them allocates nothing (a graph replays into the same buffers)."""

from __future__ import annotations

import pytest
import torch

from v4.kernels.common import interpreting
from v4.model.config import CSA, HCA, SLIDING, V4Config
from v4.model.decode_positions import DecodePositions


def _config() -> V4Config:
    return V4Config.from_dict({
        "model_type": "deepseek_v4", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3,
        "num_attention_heads": 2, "q_lora_rank": 16, "o_groups": 1, "o_lora_rank": 8, "index_n_heads": 2,
        "index_topk": 6, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
        "layer_types": [SLIDING, CSA, HCA], "num_hash_layers": 0, "num_nextn_predict_layers": 0,
        "max_position_embeddings": 1 << 20})


def _buffers(steps: DecodePositions) -> dict[str, torch.Tensor]:
    """Every tensor `update` fills, by name."""
    out = {"write_rows": steps.write_rows, "csa_indices": steps.csa_indices}
    out |= {f"ring_slot {e}": t for e, t in steps.ring_slot.items()}
    out |= {f"window {e}": t for e, t in steps.window_indices.items()}
    for table, rope in enumerate(steps.rope):
        out |= {f"rope {table} {name}": getattr(rope, name) for name in ("cos", "sin", "neg_sin")}
    for rate, step in steps.windows.items():
        for name in ("ape_slot", "write_slots", "window_rows", "current", "entry_slot", "key_slot", "closed"):
            if getattr(step, name) is not None:
                out[f"{rate} {name}"] = getattr(step, name)
        for table, (cos, sin) in step.rope.items():
            out[f"{rate} rope {table} cos"], out[f"{rate} rope {table} sin"] = cos, sin
    return out


@pytest.mark.skipif(not interpreting(), reason="runs the kernels on CPU under the interpreter")
@pytest.mark.parametrize("tokens", [1, 2])
def test_the_kernels_fill_what_the_torch_path_fills(monkeypatch, tokens: int) -> None:
    config = _config()
    tables = [torch.rand(4), torch.rand(4)]
    positions = torch.tensor([0, 3, 127, 5000], dtype=torch.long)
    active = torch.tensor([True, False, True, True])
    filled = []
    for mode in ("interpret", "0"):
        monkeypatch.setenv("V4_KERNELS", mode)
        steps = DecodePositions(config, 4, 8192, tables, [0, 1, 1], torch.device("cpu"), tokens,
                                config.sliding_window + tokens - 1)
        held = {name: t.data_ptr() for name, t in _buffers(steps).items()}
        steps.update(positions, active)
        steps.update(positions, active)  # idempotent
        buffers = _buffers(steps)
        assert {name: t.data_ptr() for name, t in buffers.items()} == held  # filled in place
        filled.append(buffers)
    assert filled[0].keys() == filled[1].keys()
    for name, got in filled[0].items():
        if got.is_floating_point():  # cos/sin of one float32 angle: to an ulp
            torch.testing.assert_close(got, filled[1][name], rtol=0, atol=2e-6, msg=name)
        else:
            assert torch.equal(got, filled[1][name]), name
    assert filled[0]["write_rows"].tolist() == [0, 4, 2, 3]
    assert filled[0]["128 closed"][:, 0].tolist() == [0, 0, 1, 39]
