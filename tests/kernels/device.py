"""Where the kernel tests run: on CUDA when there is a GPU, else on the CPU under Triton's interpreter
(kernels/common.py's `interpreting` is the one decision), else nowhere (skipped)."""

from __future__ import annotations

import pytest
import torch

from v4.kernels.common import interpreting

KERNEL_DEVICE: str | None = "cuda" if torch.cuda.is_available() else ("cpu" if interpreting() else None)
needs_kernel = pytest.mark.skipif(KERNEL_DEVICE is None, reason="needs CUDA or TRITON_INTERPRET=1")
