"""A CUDA graph cut where the host must act between its pieces.

Expert offload reads each MoE layer's routing on the host to decide which experts to copy; a single
graph cannot hold that sync, and decoding without graphs is launch-bound (43 layers of small kernels).
So the decode step is captured as consecutive graphs sharing one memory pool, split at each routing
point: piece i runs up to layer i's gate, then its host callback fetches the experts and writes their
cache slots into a device buffer, then piece i+1 runs the experts on those slots and on to the next
gate. Replaying the pieces and callbacks in capture order reproduces the step; tensors made in one
piece and read in the next live in the shared pool, kept alive by the callbacks that hold them.

Code running under capture asks `active()` for the capture and calls `split(callback)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_ACTIVE: list[PiecewiseGraph] = []


def active() -> PiecewiseGraph | None:
    """The piecewise graph being captured on this thread, if any."""
    return _ACTIVE[-1] if _ACTIVE and torch.cuda.is_current_stream_capturing() else None


class PiecewiseGraph:
    """Graphs `pieces` with host `callbacks` between them (one fewer)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pieces: list[torch.cuda.CUDAGraph] = []
        self.callbacks: list[Callable[[], None]] = []
        self._pool = torch.cuda.graph_pool_handle()  # one pool: a piece's outputs are the next piece's inputs

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Capture `fn()` (already warmed up) on a side stream; returns its output (a pool tensor)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        _ACTIVE.append(self)
        try:
            with torch.cuda.stream(stream):
                self._begin()
                out = fn()
                self.pieces[-1].capture_end()
        finally:
            _ACTIVE.pop()
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
        for index, piece in enumerate(self.pieces):
            piece.replay()
            if index < len(self.callbacks):
                self.callbacks[index]()
