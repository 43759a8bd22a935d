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
