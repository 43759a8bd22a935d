"""fused_inputs.py: the plain linears that read one input, stacked into one GEMM without holding twice."""

from __future__ import annotations

import torch
from torch import nn

from v4.model.fused_inputs import fuse_inputs


def linears(*widths: int, dtype: torch.dtype = torch.float32) -> dict[str, nn.Linear]:
    torch.manual_seed(0)
    return {f"l{i}": nn.Linear(16, width, bias=False).to(dtype) for i, width in enumerate(widths)}


def test_one_gemm_gives_each_modules_output_and_holds_the_weights_once() -> None:
    modules = linears(8, 3, 5)
    x = torch.randn(2, 4, 16)
    before = {name: m(x) for name, m in modules.items()}
    fused = fuse_inputs(modules)
    assert fused is not None and fused.weight.shape == (16, 16) and fused.widths == (8, 3, 5)
    outs = fused(x)
    for name, module in modules.items():
        torch.testing.assert_close(outs[name], before[name])
        torch.testing.assert_close(module(x), before[name])  # the module computes what it did
        assert module.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr()


def test_a_second_call_shares_the_stacked_tensor() -> None:
    modules = linears(4, 4)
    first = fuse_inputs(modules)
    second = fuse_inputs(modules)
    assert second is not None and second.weight.data_ptr() == first.weight.data_ptr()
    assert torch.equal(second.weight, first.weight)


def test_only_plain_linears_of_one_dtype_are_stacked() -> None:
    modules = {**linears(4, 6), "absent": None, "biased": nn.Linear(16, 2), "half": nn.Linear(16, 2, bias=False).half(),
               "wider": nn.Linear(32, 2, bias=False)}
    fused = fuse_inputs(modules)
    assert fused is not None and fused.names == ("l0", "l1")
    assert fuse_inputs({"one": nn.Linear(16, 4, bias=False), "none": None}) is None


def fp8_linears(*widths: int, in_features: int = 256) -> dict[str, nn.Module]:
    from v4.model.quantized_linear import FP8Linear

    torch.manual_seed(1)
    return {f"f{i}": FP8Linear.from_linear(nn.Linear(in_features, width, bias=False)) for i, width in enumerate(widths)}


def test_fp8_linears_of_one_input_stack_with_their_block_scales() -> None:
    """wq_a + wkv (or wq_b + the indexer's wq_b) as one FP8 GEMV: each module's output, its weight and
    scale now views of the stacks (held once), a second decoder sharing them."""
    from v4.model.fused_inputs import fuse_fp8_inputs

    modules = fp8_linears(256, 128, 384)
    x = torch.randn(1, 1, 256)
    before = {name: m(x) for name, m in modules.items()}
    fused = fuse_fp8_inputs(modules)
    assert fused is not None and fused.weight.shape == (768, 256) and fused.scale.shape == (6, 2)
    outs = fused(x)
    for name, module in modules.items():
        torch.testing.assert_close(outs[name], before[name], rtol=1e-5, atol=1e-5)
        assert torch.equal(module(x), before[name])  # the module computes what it did
        assert module.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr()
        assert module.scale.untyped_storage().data_ptr() == fused.scale.untyped_storage().data_ptr()
    again = fuse_fp8_inputs(modules)
    assert again is not None and again.weight.data_ptr() == fused.weight.data_ptr()


def test_only_fp8_linears_with_whole_scale_blocks_and_one_input_width_stack() -> None:
    from v4.model.fused_inputs import fuse_fp8_inputs

    modules = {**fp8_linears(128, 128), "ragged": fp8_linears(64)["f0"], "wider": fp8_linears(128, in_features=384)["f0"],
               "plain": nn.Linear(256, 128, bias=False), "absent": None}
    fused = fuse_fp8_inputs(modules)
    assert fused is not None and fused.names == ("f0", "f1")
    assert fuse_fp8_inputs({"one": fp8_linears(128)["f0"], "plain": nn.Linear(256, 128, bias=False)}) is None
