"""Quantised weights kept as stored (model/quantized_linear.py): FP8 linears and FP4 routed experts hold the
checkpoint's bytes, run through ops (kernel references on CPU), and give the dequantised model's logits.

Two comparisons recur. `ops.fp8_linear` quantises activations per 1x128 group to e4m3, as DeepSeek's
inference and the FP8 GEMM do, while the dequantised model multiplies float activations; so:
  - with `exact_fp8` (ops.fp8_linear swapped for a float matmul on the dequantised weight) the quantised
    model must give the dequantised model's logits to float32 rounding: the same numbers, wired alike;
  - as it runs, the logits differ by the activations' e4m3 rounding (3 mantissa bits: up to 2**-4
    relative per element, compounded over the layers): compared loosely, in shape and in argmax.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from v4 import model
from v4.kernels.common import interpreting
from v4.model import WeightsError, load_transformer, ops, quant
from v4.model.formats import linear_weights, stored_format
from v4.model.moe import MoE
from v4.model.parallel import Parallel
from v4.model.quant import QuantError
from v4.model.quantized_linear import FP4Linear, FP8Linear, quantize_model
from v4.model.random_checkpoint import PRESETS, init_checkpoint

CHUNKS = (9, 1, 1, 13)  # 24 tokens: a prefill, two decode steps, a prefill
QUANTISED_DTYPES = (torch.float8_e4m3fn, torch.int8, torch.float8_e8m0fnu)


def _float_matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.linear(x, quant.dequantize(weight, scale, "weight").to(x.dtype))


def _float_grouped(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    groups = x.shape[-2]
    dequantized = quant.dequantize(weight, scale, "weight").to(x.dtype).view(groups, -1, x.shape[-1])
    return torch.einsum("...gi,goi->...go", x, dequantized)


@pytest.fixture()
def exact_fp8(monkeypatch: pytest.MonkeyPatch) -> None:
    """ops.fp8_linear (and the decode GEMVs, its few-row form) without activation quantisation (see the
    module docstring)."""
    monkeypatch.setattr(ops, "fp8_linear", _float_matmul)
    monkeypatch.setattr(ops, "fp8_gemv", _float_matmul)
    monkeypatch.setattr(ops, "fp8_gemv_grouped", _float_grouped)


@pytest.fixture(scope="module")
def fp8_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_checkpoint(tmp_path_factory.mktemp("native") / "fp8", "tiny", seed=7, fp8=True)


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same random weights as `fp8_dir`, stored as float32 (init_checkpoint quantises these)."""
    return init_checkpoint(tmp_path_factory.mktemp("native") / "plain", "tiny", seed=7)


@pytest.fixture(scope="module")
def token_ids() -> list[int]:
    return torch.randint(0, PRESETS["tiny"]["vocab_size"], (24,), generator=torch.Generator().manual_seed(11)).tolist()


@pytest.fixture(scope="module")
def dequantised(fp8_dir: Path) -> model.Engine:
    return model.load(fp8_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def quantised(fp8_dir: Path) -> model.Engine:
    return model.load(fp8_dir, device="cpu", dtype="float32", quantized=True)


def _logits(engine: model.Engine, ids: list[int], chunks: tuple[int, ...] | None = None) -> torch.Tensor:
    state = engine.new_state(max_tokens=len(ids))
    sizes, starts = chunks or (len(ids),), [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    return torch.cat([engine.forward(ids[s : s + n], state) for s, n in zip(starts, sizes)])


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _assert_close_under_fp8_activations(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Measured on the tiny preset (seed 7, 24 tokens): relative norm error 0.051, max 0.12, cosine >= 0.991
    per token, every argmax equal; bounds about twice that."""
    assert ((actual - expected).norm() / expected.norm()).item() < 0.1
    assert F.cosine_similarity(actual, expected, dim=-1).min().item() > 0.98
    assert (actual.argmax(-1) == expected.argmax(-1)).float().mean().item() >= 0.9


def _quantised_names(transformer: nn.Module) -> set[str]:
    """The weights the checkpoint classification says DeepSeek ships as FP8 or FP4."""
    linear = linear_weights(transformer)
    return {name for name in linear if stored_format(name, linear) in ("fp8", "fp4")}


def _modules_of(names: set[str]) -> set[str]:
    return {name.removesuffix(".weight") for name in names}


def _held_quantised(transformer: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in transformer.named_modules() if isinstance(m, (FP8Linear, FP4Linear))}


def _bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_the_quantised_load_holds_the_stored_bytes_and_no_float_copies(
        fp8_dir: Path, quantised: model.Engine, dequantised: model.Engine) -> None:
    float_model, held = dequantised.model, _held_quantised(quantised.model)
    targets = _quantised_names(float_model)
    assert set(held) == _modules_of(targets)
    stored = load_file(str(fp8_dir / "model.safetensors"))
    for name, module in held.items():
        routed = ".experts." in name and "shared" not in name
        assert isinstance(module, FP4Linear if routed else FP8Linear), name
        assert module.weight.dtype == (torch.int8 if routed else torch.float8_e4m3fn), name
        assert module.scale.dtype == torch.float8_e8m0fnu, name
        assert torch.equal(module.weight.view(torch.uint8), stored[f"{name}.weight"].view(torch.uint8)), name
        assert torch.equal(module.scale.view(torch.uint8), stored[f"{name}.scale"].view(torch.uint8)), name
    moes = [m for m in quantised.model.modules() if isinstance(m, MoE)]
    assert moes and all(m.strategy.fmt == "fp4" for m in moes)
    for moe in moes:  # the stacks are the experts' only copy: each expert's tensors are views into them
        w1, s1 = moe.stacked_quantized()[:2]
        assert w1.dtype == torch.int8 and s1.dtype == torch.float8_e8m0fnu
        assert moe.experts[0].w1.weight.data_ptr() == w1.data_ptr()
        assert moe.experts[1].w1.scale.data_ptr() == s1[1].data_ptr()
    # Everything else is as the dequantised load has it; the targeted float32 weights became their pairs.
    float_bytes = _bytes([p for n, p in float_model.named_parameters() if n in targets])
    pair_bytes = _bytes([t for m in held.values() for t in (m.weight, m.scale)])
    total = _bytes(list(float_model.parameters())) - float_bytes + pair_bytes
    assert _bytes(list(quantised.model.parameters())) == total
    assert pair_bytes < 0.2 * float_bytes
    assert all(p.dtype in QUANTISED_DTYPES for name, p in quantised.model.named_parameters()
               if name.removesuffix(".weight").removesuffix(".scale") in held)


def test_quantised_logits_are_the_dequantised_models(
        exact_fp8: None, quantised: model.Engine, dequantised: model.Engine, token_ids: list[int]) -> None:
    # measured: 0.0 (the same float32 products; the FP4 experts' reference dequantises as quant.py does)
    assert _relative_error(_logits(quantised, token_ids), _logits(dequantised, token_ids)) < 1e-6


def test_quantised_logits_with_fp8_activations_stay_close(
        quantised: model.Engine, dequantised: model.Engine, token_ids: list[int]) -> None:
    _assert_close_under_fp8_activations(_logits(quantised, token_ids), _logits(dequantised, token_ids))


def test_chunked_decode_on_the_quantised_model_equals_one_forward(quantised: model.Engine,
                                                                  token_ids: list[int]) -> None:
    # Activations are quantised per token row, so chunking changes nothing but float32 sum order.
    # measured: 2.7e-7
    assert _relative_error(_logits(quantised, token_ids, CHUNKS), _logits(quantised, token_ids)) < 1e-5


@pytest.mark.parametrize("experts", ["fp4", "fp8"])
def test_quantize_model_follows_the_checkpoint_classification(
        exact_fp8: None, monkeypatch: pytest.MonkeyPatch, plain_dir: Path, quantised: model.Engine,
        token_ids: list[int], experts: str) -> None:
    """A float model quantised in place holds what the FP8 checkpoint ships (the same bytes: its pairs
    were made by the same functions from the same weights) and computes what its dequantised round trip
    computes."""
    engine = model.load(plain_dir, device="cpu", dtype="float32")
    roundtrip = copy.deepcopy(engine.model)
    targets = _quantised_names(roundtrip)
    with torch.no_grad():
        for name, param in roundtrip.named_parameters():
            if name in targets:
                fp4 = ".experts." in name and "shared" not in name and experts == "fp4"
                pair = quant.quantize_fp4(param) if fp4 else quant.quantize_fp8(param)
                param.copy_(quant.dequantize(*pair, name))
    expected = roundtrip(torch.tensor([token_ids]))[0]

    quantize_model(engine.model, experts=experts)
    held = _held_quantised(engine.model)
    assert set(held) == _modules_of(targets)
    assert all(m.strategy.fmt == experts for m in engine.model.modules() if isinstance(m, MoE))
    if experts == "fp4":
        shipped = dict(quantised.model.named_parameters())
        assert all(torch.equal(p.view(torch.uint8), shipped[n].view(torch.uint8))
                   for n, p in engine.model.named_parameters() if n.removesuffix(".weight").removesuffix(".scale")
                   in held)
    assert _relative_error(_logits(engine, token_ids), expected) < 1e-6
    monkeypatch.undo()  # ops.fp8_linear as it runs: activations quantised
    _assert_close_under_fp8_activations(_logits(engine, token_ids), expected)


def test_grouped_wo_a_takes_each_groups_rows(exact_fp8: None) -> None:
    """One FP8 GEMM per group when the groups' rows own their scale rows (r dividing or a multiple of
    128), a dequantised temporary otherwise: the same product as the float grouped einsum."""
    generator = torch.Generator().manual_seed(3)
    for rows in (16, 128, 48):
        linear = nn.Linear(64, 2 * rows, bias=False).requires_grad_(False)
        nn.init.normal_(linear.weight, generator=generator)
        linear.weight[rows:] *= 16  # the groups' scales differ
        fp8 = FP8Linear.from_linear(linear)
        x = torch.randn(1, 3, 2, 64, generator=generator)
        weight = fp8.dequantized(torch.float32).view(2, rows, 64)
        expected = torch.einsum("bsgi,goi->bsgo", x, weight)
        assert _relative_error(fp8.grouped(x), expected) < 1e-6, rows


def test_a_ragged_k_is_zero_padded_as_the_kernel_would_see_it() -> None:
    """K = 40 (test presets only): the same result as K = 128 with zero columns in x and weight."""
    generator = torch.Generator().manual_seed(4)
    weight, x = torch.randn(24, 40, generator=generator), torch.randn(5, 40, generator=generator)
    small = FP8Linear.from_quantized(*quant.quantize_fp8(weight))
    padded = FP8Linear.from_quantized(F.pad(small.weight.view(torch.uint8), (0, 88)).view(torch.float8_e4m3fn),
                                      small.scale)  # one 128-column scale block either way
    assert torch.equal(small(x), padded(F.pad(x, (0, 88))))
    assert _relative_error(small(x), x @ weight.T) < 0.1  # FP8 weights and activations


def _edited(fp8_dir: Path, directory: Path, edit) -> Path:
    tensors = load_file(str(fp8_dir / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text((fp8_dir / "config.json").read_text())
    return directory


def _load_placing_nothing(path: Path) -> None:
    placed = []
    try:
        load_transformer(path, quantized=True, progress=lambda *a: placed.append(a))
    finally:
        assert placed == []


def test_a_scale_of_the_wrong_shape_is_named_before_anything_is_placed(fp8_dir: Path, tmp_path: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors["layers.1.attn.wq_b.scale"] = torch.ones(2, 1).to(torch.float8_e8m0fnu)

    with pytest.raises(WeightsError, match=r"layers\.1\.attn\.wq_b.*scale has shape \(2, 1\)"):
        _load_placing_nothing(_edited(fp8_dir, tmp_path, edit))


def test_a_scale_of_a_dtype_the_format_does_not_take_is_named(fp8_dir: Path, tmp_path: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors["layers.1.attn.wq_b.scale"] = tensors["layers.1.attn.wq_b.scale"].float().half()

    # refused from the headers, before anything is read, as the WeightsError the CLI reports
    with pytest.raises(WeightsError, match=r"layers\.1\.attn\.wq_b\.weight: its scale is F16; a F8_E4M3 weight"):
        _load_placing_nothing(_edited(fp8_dir, tmp_path, edit))


def test_routed_experts_in_mixed_formats_are_named(fp8_dir: Path, tmp_path: Path) -> None:
    def edit(tensors: dict[str, torch.Tensor]) -> None:  # one expert's w1 as FP8: the grouped kernel takes one format
        name = "layers.2.ffn.experts.3.w1"
        weight = quant.dequantize(tensors[f"{name}.weight"], tensors[f"{name}.scale"], name)
        tensors[f"{name}.weight"], tensors[f"{name}.scale"] = quant.quantize_fp8(weight)

    with pytest.raises(WeightsError, match=r"layers\.2\.ffn\.experts: routed experts stored in mixed formats"):
        _load_placing_nothing(_edited(fp8_dir, tmp_path, edit))


def test_a_pair_that_does_not_fit_is_refused() -> None:
    weight, scale = quant.quantize_fp8(torch.randn(200, 256))
    with pytest.raises(QuantError, match=r"wo_a\.weight: FP8 scale has shape \(2, 1\)"):
        FP8Linear.from_quantized(weight, scale[:, :1], "wo_a.weight")
    with pytest.raises(QuantError, match=r"packed FP4 weight must be one of"):
        FP4Linear.from_quantized(weight, scale)


def test_cpu_loads_stay_dequantised_unless_asked(fp8_dir: Path) -> None:
    assert not _held_quantised(load_transformer(fp8_dir, quantized=None))
    assert not _held_quantised(load_transformer(fp8_dir, quantized=None, parallel=Parallel(0, 2)))
    held = _held_quantised(load_transformer(fp8_dir, quantized=True, parallel=Parallel(0, 2)))  # one rank's share
    assert "layers.0.attn.wq_a" in held and "layers.0.ffn.experts.0.w1" in held
    assert "layers.0.ffn.experts.4.w1" not in held  # rank 1's expert
    assert "layers.0.attn.wq_b" not in held  # 2 heads of 32 rows: the slice would cut a 128-row scale block


@pytest.mark.skipif(not interpreting(), reason="the CPU model runs kernels only interpreted")
def test_the_kernels_run_the_quantised_model_as_the_references(
        monkeypatch: pytest.MonkeyPatch, quantised: model.Engine, token_ids: list[int]) -> None:
    """The FP8 GEMM and the FP4 grouped experts (Triton's interpreter) against their references, on the
    whole quantised model. measured: 3.2e-7, in about 11 s."""
    monkeypatch.setenv("V4_KERNELS", "0")
    reference = _logits(quantised, token_ids[:8])
    monkeypatch.setenv("V4_KERNELS", "interpret")
    assert ops.kernels_enabled(torch.zeros(1))
    assert _relative_error(_logits(quantised, token_ids[:8]), reference) < 1e-5


def test_the_decode_gemv_takes_one_row_and_two_rows_of_a_small_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    """Which FP8 path a few rows take (quantized_linear.py, measured on the H100): the GEMV for one row,
    and for two rows only up to GEMV_TWO_ROWS_MAX_WEIGHTS weights; the GEMM otherwise."""
    from v4.model import quantized_linear

    calls: list[str] = []
    monkeypatch.setattr(ops, "fp8_gemv", lambda *a: calls.append("gemv") or _float_matmul(*a))
    monkeypatch.setattr(ops, "fp8_linear", lambda *a: calls.append("gemm") or _float_matmul(*a))
    monkeypatch.setattr(quantized_linear, "GEMV_TWO_ROWS_MAX_WEIGHTS", 256 * 256)
    small, large = (quant.quantize_fp8(torch.randn(n, 256) * 0.05, ue8m0=True) for n in (256, 512))
    for rows, (weight, scale) in ((1, large), (2, small), (2, large), (3, small)):
        quantized_linear.fp8_linear(torch.randn(rows, 256), weight, scale)
    assert calls == ["gemv", "gemv", "gemm", "gemm"]
