"""The engine on its Triton kernels still matches transformers: on CUDA when there is a GPU, else the
same kernels through Triton's interpreter on CPU (`V4_KERNELS=interpret`)."""

from __future__ import annotations

import pytest
import torch

from v4 import model
from v4.kernels.common import interpreting
from v4.model import ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and not interpreting(),
                                reason="needs CUDA or TRITON_INTERPRET=1")


@pytest.fixture()
def kernels_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V4_KERNELS", "1" if DEVICE == "cuda" else "interpret")


def _ids(n: int, seed: int = 5) -> list[int]:
    return torch.randint(0, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def test_kernels_are_what_runs(kernels_on: None) -> None:
    assert ops.kernels_enabled(torch.zeros(1, device=DEVICE))


def test_prefill_chunks_and_decode_on_kernels_match_transformers(kernels_on: None, hf_checkpoint) -> None:
    """44 tokens cross 5 sliding windows, 11 CSA windows (top-3 of them) and 5 HCA windows; fed as a
    prefill, a chunk and single tokens, every step's logits against transformers' full forward."""
    path, reference = hf_checkpoint
    engine = model.load(path, device=DEVICE, dtype="float32")
    ids = _ids(44)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].float()
    state = engine.new_state(max_tokens=64)
    pieces = [engine.forward(ids[:30], state), engine.forward(ids[30:41], state)]
    pieces += [engine.forward([token], state) for token in ids[41:]]
    ours = torch.cat(pieces).cpu()
    # Kernel fp32 dots are exact (IEEE); sums run in another order than transformers' eager code.
    assert _relative_error(ours, expected) < 1e-4


def test_kernels_and_references_agree_in_bfloat16(monkeypatch: pytest.MonkeyPatch, hf_checkpoint) -> None:
    """The same bf16 engine with the kernels and with the references (V4_KERNELS=0): top-k choices can
    flip in bf16, so compare greedy-relevant structure loosely and the values at bf16 precision."""
    path, _ = hf_checkpoint
    engine = model.load(path, device=DEVICE, dtype="bfloat16")
    ids = _ids(40, seed=9)
    monkeypatch.setenv("V4_KERNELS", "0")
    reference = engine.forward(ids, engine.new_state(max_tokens=64)).cpu()
    monkeypatch.setenv("V4_KERNELS", "1" if DEVICE == "cuda" else "interpret")
    ours = engine.forward(ids, engine.new_state(max_tokens=64)).cpu()
    assert torch.isfinite(ours).all()
    assert _relative_error(ours[:12], reference[:12]) < 5e-2  # before any CSA choice can differ
