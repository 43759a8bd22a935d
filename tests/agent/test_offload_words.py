"""The offload report in the status bar's words (agent/bootstrap.py `offload_words`)."""

from __future__ import annotations

from v4.agent.bootstrap import offload_words

GIB = 2**30
REPORT = {"gpu_bytes": int(19.9 * GIB), "pinned_bytes": int(140.25 * GIB), "mmap_bytes": 0,
          "experts_per_layer_on_gpu": 21, "experts_per_layer": 256, "hit_rate": 0.8731}


def test_where_the_weights_live_and_the_hit_rate() -> None:
    assert offload_words(REPORT) == "GPU 19.9G · experts 21/256 per layer · host 140G pinned · hit 87%"
    mapped = REPORT | {"pinned_bytes": 0, "mmap_bytes": int(140.25 * GIB), "hit_rate": None}
    assert offload_words(mapped) == "GPU 19.9G · experts 21/256 per layer · host 140G mmap · hit —"


def test_nothing_without_offload() -> None:
    assert offload_words(None) == ""
