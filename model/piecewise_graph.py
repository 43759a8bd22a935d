"""A CUDA graph cut where the host must act between its pieces.

Expert offload reads each MoE layer's routing on the host to decide which experts to copy; a single
graph cannot hold that sync, and decoding without graphs is launch-bound (43 layers of small kernels).
So the decode step is captured as consecutive graphs sharing one memory pool, split at each routing
point: piece i runs up to layer i's gate, then its host callback fetches the experts and writes their
cache slots into a device buffer, then piece i+1 runs the experts on those slots and on to the next
gate. Replaying the pieces and callbacks in capture order reproduces the step; tensors made in one
piece and read in the next live in the shared pool, kept alive by the callbacks that hold them.

The code that cuts the graph is named when the graph is made (its `cut_points`, the offload caches):
while `capture` runs, each holds the graph in its `capturing` attribute and calls `split(callback)` on
it; no process-wide state says which graph is being captured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch


class CutPoint(Protocol):
    """Code that may end a piece (offload.py's ExpertCache): `capturing` is the graph being captured
    while `PiecewiseGraph.capture` runs, None otherwise."""

    capturing: PiecewiseGraph | None


class PiecewiseGraph:
    """Graphs `pieces` with host `callbacks` between them (one fewer), cut by `cut_points`."""

    def __init__(self, device: torch.device, cut_points: Sequence[CutPoint]) -> None:
        self.device = device
        self.cut_points = tuple(cut_points)
        self.pieces: list[torch.cuda.CUDAGraph] = []
        self.callbacks: list[Callable[[], None]] = []
        self._pool = torch.cuda.graph_pool_handle()  # one pool: a piece's outputs are the next piece's inputs

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Capture `fn()` (already warmed up) on a side stream; returns its output (a pool tensor)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        for point in self.cut_points:
            point.capturing = self
        try:
            with torch.cuda.stream(stream):
                self._begin()
                out = fn()
                self.pieces[-1].capture_end()
        finally:
            for point in self.cut_points:
                point.capturing = None
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return out

    def split(self, callback: Callable[[], None]) -> None:
        """End the current piece; at replay `callback` runs on the host before the next piece."""
        self.pieces[-1].capture_end()
        self.callbacks.append(callback)
        self._begin()

    def _begin(self) -> None:
        graph = torch.cuda.CUDAGraph()
        graph.capture_begin(pool=self._pool)
        self.pieces.append(graph)

    def replay(self) -> None:
        """Replay the pieces in capture order, each host callback between its two pieces."""
        for index, piece in enumerate(self.pieces):
            piece.replay()
            if index < len(self.callbacks):
                self.callbacks[index]()
