"""FP8 block / FP4 group (de)quantisation: hand-built values, round trips, errors, safetensors."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from v4.model.quant import (
    E2M1_VALUES, FP4_GROUP, FP8_BLOCK, QuantError, dequantize, dequantize_fp4, dequantize_fp8,
    is_fp4_packed, quantize_fp4, quantize_fp8,
)

NAME = "layers.3.ffn.experts.7.w1.weight"


def _transformers_fp8():
    """transformers' own FP8/FP4 dequantizer, as an independent reference. Importing it costs ~6 s, so
    it is only used when the session already has transformers (e.g. `pytest tests/model`)."""
    if "transformers" not in sys.modules:
        pytest.skip("transformers not imported by this session; run with tests/model/test_config.py")
    return pytest.importorskip("transformers.integrations.finegrained_fp8")


def _e8m0(exponents: list | torch.Tensor) -> torch.Tensor:
    """e8m0 scales 2**e, built from raw bytes so the test does not trust any float->e8m0 cast."""
    return (torch.as_tensor(exponents) + 127).to(torch.uint8).view(torch.float8_e8m0fnu)


def _pack(codes: torch.Tensor) -> torch.Tensor:
    """Codes [.., n] (0..15) -> int8 [.., n/2], column 2j in the low nibble."""
    codes = codes.to(torch.uint8)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).view(torch.int8)


def _is_power_of_two(scale: torch.Tensor) -> bool:
    mantissa, _ = torch.frexp(scale.float())
    return bool((mantissa == 0.5).all())


# --- FP4: known values -------------------------------------------------------------------------------

def test_fp4_nibble_order_and_table():
    # byte 0x21: low nibble 1 (0.5) is column 0, high nibble 2 (1.0) is column 1
    one = torch.tensor([[0x21] + [0] * 15], dtype=torch.uint8)
    out = dequantize_fp4(one, _e8m0([[0]]))
    assert out[0, :2].tolist() == [0.5, 1.0] and not out[0, 2:].any()
    # every code in the low nibble (even columns) and, reversed, in the high nibble (odd columns)
    low = torch.arange(16, dtype=torch.uint8)
    high = torch.arange(15, -1, -1, dtype=torch.uint8)
    byte = (low | (high << 4)).view(1, 16)
    out = dequantize_fp4(byte, _e8m0([[0]]))
    assert out[0, 0::2].tolist() == list(E2M1_VALUES)
    assert out[0, 1::2].tolist() == list(reversed(E2M1_VALUES))
    assert E2M1_VALUES[:8] == (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    assert torch.signbit(out[0, 16]).item()  # code 8 is -0.0


def test_fp4_group_scales_hit_their_columns():
    codes = torch.full((2, 96), 2)  # every value 1.0
    scale = _e8m0([[0, 1, -2], [3, -1, 5]])  # per row, one per 32 columns
    out = dequantize_fp4(_pack(codes), scale)
    assert out.dtype == torch.float32 and out.shape == (2, 96)
    expected = torch.tensor([[1.0, 2.0, 0.25], [8.0, 0.5, 32.0]]).repeat_interleave(32, dim=1)
    assert torch.equal(out, expected)


def test_fp4_float32_scales_and_all_packed_dtypes_agree():
    torch.manual_seed(0)
    packed = torch.randint(-128, 128, (5, 64), dtype=torch.int8)
    scale = _e8m0(torch.randint(-6, 6, (5, 4)))
    reference = dequantize_fp4(packed, scale)
    assert torch.equal(dequantize_fp4(packed.view(torch.uint8), scale), reference)
    assert torch.equal(dequantize_fp4(packed.view(torch.float4_e2m1fn_x2), scale), reference)
    assert torch.equal(dequantize_fp4(packed, scale.float()), reference)


def test_fp4_matches_transformers_dequantizer():
    finegrained = _transformers_fp8()
    torch.manual_seed(1)
    packed = torch.randint(-128, 128, (4, 64), dtype=torch.int8)
    scale = _e8m0(torch.randint(-3, 3, (4, 4)))
    theirs = finegrained.Fp8Dequantize(None)._dequantize_one(packed, scale, torch.float32)
    assert torch.equal(dequantize_fp4(packed, scale), theirs)


# --- FP8: known values -------------------------------------------------------------------------------

@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16, torch.float8_e8m0fnu])
def test_fp8_block_scales_hit_their_blocks_including_ragged_edges(scale_dtype):
    out_f, in_f = 2 * FP8_BLOCK + 3, FP8_BLOCK + 5  # 3 x 2 blocks, the last row and column ragged
    weight = torch.ones(out_f, in_f).to(torch.float8_e4m3fn)
    values = torch.tensor([[1.0, 2.0], [4.0, 0.5], [0.25, 8.0]])
    scale = _e8m0(torch.log2(values).int()) if scale_dtype == torch.float8_e8m0fnu else values.to(scale_dtype)
    out = dequantize_fp8(weight, scale)
    assert out.dtype == torch.float32 and out.shape == (out_f, in_f)
    b = FP8_BLOCK
    for bi, rows in enumerate([slice(0, b), slice(b, 2 * b), slice(2 * b, out_f)]):
        for bj, cols in enumerate([slice(0, b), slice(b, in_f)]):
            assert (out[rows, cols] == values[bi, bj]).all(), (bi, bj)


def test_fp8_values_are_e4m3():
    values = torch.tensor([[448.0, -448.0, 0.015625, -2.75, 0.0, 1.125]])
    out = dequantize_fp8(values.to(torch.float8_e4m3fn), torch.tensor([[0.5]]))
    assert torch.equal(out, values * 0.5)


def test_fp8_matches_transformers_dequantizer():
    finegrained = _transformers_fp8()
    torch.manual_seed(2)
    weight = torch.randn(256 + 40, 384 + 7).to(torch.float8_e4m3fn)
    scale = torch.rand(3, 4) + 0.1
    theirs = finegrained._dequantize_fp8_weight(weight, scale, [128, 128], torch.float32)
    assert torch.equal(dequantize_fp8(weight, scale), theirs)


# --- round trips -------------------------------------------------------------------------------------

def test_fp8_round_trip_is_exact_for_representable_weights():
    torch.manual_seed(3)
    codes = (torch.randn(300, 200) * 50).clamp(-440, 440).to(torch.float8_e4m3fn)
    exact = dequantize_fp8(codes, _e8m0(torch.randint(-20, 5, (3, 2))))
    weight, scale = quantize_fp8(exact)
    assert weight.dtype == torch.float8_e4m3fn and weight.shape == (300, 200)
    assert scale.dtype == torch.float8_e8m0fnu and scale.shape == (3, 2)
    assert torch.equal(dequantize_fp8(weight, scale), exact)


@pytest.mark.parametrize("ue8m0", [True, False])
def test_fp8_round_trip_error_is_bounded(ue8m0):
    torch.manual_seed(4)
    x = torch.randn(260, 300) * torch.logspace(-3, 1, 300)  # columns of very different magnitude
    weight, scale = quantize_fp8(x, ue8m0=ue8m0)
    assert scale.dtype == (torch.float8_e8m0fnu if ue8m0 else torch.float32)
    s = scale.float().repeat_interleave(FP8_BLOCK, 0)[:260].repeat_interleave(FP8_BLOCK, 1)[:, :300]
    err = (dequantize_fp8(weight, scale) - x).abs()
    # e4m3: 3 mantissa bits (relative half-step 2**-4); subnormal step 2**-9 of the block scale
    assert (err <= x.abs() * 2.0**-4 + s * 2.0**-10 + 1e-12).all()


def test_fp4_round_trip_is_exact_for_representable_weights():
    torch.manual_seed(5)
    codes = torch.randint(0, 16, (6, 128))
    codes[:, ::FP4_GROUP] = 7  # every group reaches 6, so its scale is exactly recovered
    codes[:, 1::FP4_GROUP] = 8  # and holds a -0.0, which must come back as zero
    packed, scale = _pack(codes), _e8m0(torch.randint(-10, 10, (6, 4)))
    exact = dequantize_fp4(packed, scale)
    again, scale_again = quantize_fp4(exact)
    assert again.dtype == torch.int8 and again.shape == (6, 64)
    assert scale_again.dtype == torch.float8_e8m0fnu and scale_again.shape == (6, 4)
    assert torch.equal(scale_again.view(torch.uint8), scale.view(torch.uint8))
    assert torch.equal(dequantize_fp4(again, scale_again), exact)
    nonzero = codes % 8 != 0
    assert torch.equal(_unpacked(again)[nonzero], codes[nonzero].to(torch.uint8))


def _unpacked(packed: torch.Tensor) -> torch.Tensor:
    u = packed.view(torch.uint8)
    return torch.stack([u & 0xF, u >> 4], dim=-1).flatten(-2)


def test_fp4_rounds_to_nearest_ties_to_even():
    # scale 1 (the group max is 6); each midpoint goes to the neighbour with the even code
    x = torch.zeros(1, 32)
    x[0, :9] = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.5])
    packed, scale = quantize_fp4(x)
    assert scale.float().item() == 1.0
    assert dequantize_fp4(packed, scale)[0, :9].tolist() == [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -6.0]


def test_fp4_round_trip_error_is_bounded():
    torch.manual_seed(6)
    x = torch.randn(64, 256) * torch.logspace(-4, 2, 256)
    packed, scale = quantize_fp4(x)
    assert _is_power_of_two(scale)
    s = scale.float().repeat_interleave(FP4_GROUP, 1)
    assert ((x.abs() / s) <= 6).all() and ((x.abs() / s).unflatten(1, (-1, 32)).amax(-1) > 3).all()
    err = (dequantize_fp4(packed, scale) - x).abs()
    # half the spacing of e2m1: 0.25 below 2, then at most a fifth of the value
    assert (err <= torch.maximum(0.25 * s, x.abs() / 5) * (1 + 1e-6)).all()
    assert (err.norm() / x.norm()) < 0.15


def test_e8m0_scales_are_powers_of_two_and_minimal():
    torch.manual_seed(7)
    x = torch.randn(256, 256) * 3
    _, scale8 = quantize_fp8(x)
    assert _is_power_of_two(scale8)
    amax = x.abs().unflatten(1, (2, 128)).unflatten(0, (2, 128)).amax(dim=(1, 3))
    assert (scale8.float() >= amax / 448).all() and (scale8.float() < 2 * amax / 448).all()
    _, scale4 = quantize_fp4(x)
    amax4 = x.abs().unflatten(1, (-1, 32)).amax(-1)
    assert (scale4.float() >= amax4 / 6).all() and (scale4.float() < 2 * amax4 / 6).all()


def test_zero_and_stacked_weights():
    zeros = torch.zeros(3, 64)
    assert torch.equal(dequantize(*quantize_fp4(zeros), "z"), zeros)
    assert torch.equal(dequantize(*quantize_fp8(zeros), "z"), zeros)
    torch.manual_seed(8)
    experts = torch.randn(4, 40, 64)  # [experts, out, in], as transformers stacks them
    packed, scale = quantize_fp4(experts)
    assert packed.shape == (4, 40, 32) and scale.shape == (4, 40, 2)
    assert torch.equal(dequantize_fp4(packed, scale),
                       torch.stack([dequantize_fp4(p, s) for p, s in zip(packed, scale)]))
    weight, scale = quantize_fp8(experts, block=16)
    assert scale.shape == (4, 3, 4)
    assert torch.equal(dequantize_fp8(weight, scale, block=16),
                       torch.stack([dequantize_fp8(w, s, block=16) for w, s in zip(weight, scale)]))


# --- dispatch and errors -----------------------------------------------------------------------------

def test_dispatch_tells_fp4_from_fp8():
    torch.manual_seed(9)
    x = torch.randn(256, 256)
    fp4, fp8 = quantize_fp4(x), quantize_fp8(x)
    assert is_fp4_packed(*fp4) and is_fp4_packed(fp4[0].view(torch.float4_e2m1fn_x2), fp4[1])
    assert not is_fp4_packed(*fp8)
    assert not is_fp4_packed(fp4[0], fp8[1])  # a packed weight with an FP8-sized scale grid
    assert torch.equal(dequantize(*fp4, NAME), dequantize_fp4(*fp4))
    assert torch.equal(dequantize(*fp8, NAME), dequantize_fp8(*fp8))


@pytest.mark.parametrize("case", ["fp8_scale_shape", "fp4_scale_shape", "fp8_scale_dtype", "fp4_scale_dtype",
                                  "fp8_weight_dtype", "fp4_weight_dtype", "neither", "vector"])
def test_errors_name_the_tensor(case):
    fp8 = torch.zeros(200, 300).to(torch.float8_e4m3fn)
    fp4 = torch.zeros(200, 64, dtype=torch.int8)
    calls = {
        "fp8_scale_shape": lambda: dequantize_fp8(fp8, torch.ones(2, 2), NAME),
        "fp4_scale_shape": lambda: dequantize_fp4(fp4, _e8m0(torch.zeros(200, 2, dtype=torch.int32)), NAME),
        "fp8_scale_dtype": lambda: dequantize_fp8(fp8, torch.ones(2, 3, dtype=torch.int32), NAME),
        "fp4_scale_dtype": lambda: dequantize_fp4(fp4, torch.ones(200, 4, dtype=torch.uint8), NAME),
        "fp8_weight_dtype": lambda: dequantize_fp8(fp8.float(), torch.ones(2, 3), NAME),
        "fp4_weight_dtype": lambda: dequantize_fp4(fp4.float(), torch.ones(200, 4), NAME),
        "neither": lambda: dequantize(torch.zeros(4, 4, dtype=torch.bfloat16), torch.ones(1, 1), NAME),
        "vector": lambda: dequantize(torch.zeros(64, dtype=torch.int8), torch.ones(4), NAME),
    }
    with pytest.raises(QuantError, match=NAME.replace(".", r"\.")):
        calls[case]()
    assert issubclass(QuantError, ValueError)


def test_mismatched_scale_message_gives_both_shapes():
    with pytest.raises(QuantError, match=r"\(2, 2\).*\(200, 300\).*\(2, 3\)"):
        dequantize(torch.zeros(200, 300).to(torch.float8_e4m3fn), torch.ones(2, 2), NAME)


# --- safetensors -------------------------------------------------------------------------------------

def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(10)
    x = torch.randn(130, 256)
    w8, s8 = quantize_fp8(x)
    w8f, s8f = quantize_fp8(x, ue8m0=False)
    w4, s4 = quantize_fp4(x)
    tensors = {
        "a.weight": w8, "a.scale": s8, "b.weight": w8f, "b.weight_scale_inv": s8f,
        "c.weight": w4, "c.scale": s4, "d.weight": w4.clone().view(torch.float4_e2m1fn_x2), "d.scale": s4.clone(),
    }
    path = tmp_path / "q.safetensors"
    save_file(tensors, str(path))
    loaded = load_file(str(path))
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and loaded[key].shape == tensor.shape, key
        assert torch.equal(loaded[key].view(torch.uint8), tensor.view(torch.uint8)), key
    for prefix, scale in (("a", "scale"), ("b", "weight_scale_inv"), ("c", "scale"), ("d", "scale")):
        assert torch.equal(dequantize(loaded[f"{prefix}.weight"], loaded[f"{prefix}.{scale}"], prefix),
                           dequantize(tensors[f"{prefix}.weight"], tensors[f"{prefix}.{scale}"], prefix))
