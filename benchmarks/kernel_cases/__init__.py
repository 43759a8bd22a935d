"""Per-kernel benchmark cases for benchmarks/bench_kernels.py: one module per kernel family.

Each module defines `cases(device) -> list[Case]`; the harness times every case's callables with the
same method (CUDA events, median, inputs rotated past L2) next to the two ceilings it measures in the
same run (device-to-device copy, bf16 matmul).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Case:
    """One kernel at one shape.

    `bytes_moved` is the fewest bytes the call must move through device memory (each input read once,
    each output written once); `flops` the floating-point operations it must do. `kernel`, `eager` and
    `compiled` take no arguments and run one call each (the case owns its inputs; rotate several input
    sets inside the callable if one set fits in L2). `check` returns the relative error
    ||kernel - reference|| / ||reference|| on fresh random inputs. `bound` is "memory" or "compute":
    the ceiling the goal is stated against.
    """

    kernel_name: str
    shape: str
    bytes_moved: int
    flops: int
    bound: str
    kernel: Callable[[], object]
    eager: Callable[[], object]
    check: Callable[[], float]
    compiled: Callable[[], object] | None = None
    goal: str = ""
    extra: dict = field(default_factory=dict)
