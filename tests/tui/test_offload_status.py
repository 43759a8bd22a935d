"""The status bar says where an offloaded model's weights live and how its expert caches hit (issue 28):
from the start-up report, then after every answer (the embedded engine on CPU, experts offloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import tiny_chat_checkpoint
from v4.agent.options import BackendOptions, EngineOptions
from v4.agent.workspace import Workspace
from v4.tui.app import V4App
from v4.tui.widgets.status_bar import StatusBar

from .conftest import ask, ready

pytestmark = pytest.mark.anyio


def _bar(app: V4App) -> str:
    return str(app.main.query_one(StatusBar).render())


async def test_the_status_bar_reports_the_offload(repo: Path, tmp_path: Path) -> None:
    checkpoint = tiny_chat_checkpoint(tmp_path / "ckpt", seed=0)
    options = BackendOptions(model=checkpoint, use_store=False, engine=EngineOptions(device="cpu", offload_experts=3))
    app = V4App(repo, options, Workspace(repo))
    async with app.run_test(size=(220, 30)) as pilot:
        await ready(pilot)
        assert "offload: GPU " in _bar(app) and "experts 3/8 per layer · host " in _bar(app)
        await ask(pilot, "what does add return?")
        report = app.main.services.chat.backend.inner.offload_report()
        assert report["hits"] + report["misses"] > 0
        assert f"hit {100 * report['hit_rate']:.0f}%" in _bar(app)


async def test_no_offload_no_words(make_app) -> None:
    app = make_app("Done.")
    async with app.run_test(size=(220, 30)) as pilot:
        await ready(pilot)
        assert "offload" not in _bar(app)
