"""Progress bars on stderr, for the slow steps a user waits on at a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from v4.agent.options import EngineOptions
    from v4.model.engine import Engine

ShardProgress = Callable[[str, int, int], None]  # (shard, bytes done, bytes total)
IndexProgress = Callable[[str, int, int], None]  # (phase, files done, files total)


@contextmanager
def shard_progress(show: bool | None = None) -> Iterator[ShardProgress | None]:
    """A progress bar per checkpoint shard while a model loads (a real checkpoint is tens of shards
    and minutes of reading); yields the callback for `model.load`, or None when stderr is no terminal."""
    if show is None:
        show = sys.stderr.isatty()
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=Console(file=sys.stderr), transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(shard: str, done: int, total: int) -> None:
            if shard not in tasks:
                tasks[shard] = bar.add_task(f"loading {shard}", total=total)
            bar.update(tasks[shard], completed=done)

        yield progress


@contextmanager
def index_progress(show: bool) -> Iterator[IndexProgress | None]:
    """A bar for indexing a repository (reading, parsing, ranking files); yields the index's progress
    callback, or None when not `show`."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True, console=Console(file=sys.stderr)) as bar:
        task = bar.add_task("reading files", total=None)

        def progress(phase: str, done: int, total: int) -> None:
            bar.update(task, description=f"{phase} files", completed=done, total=total)

        yield progress


def load_engine(path: Path, options: EngineOptions) -> Engine:
    """`model.load` with a bar per shard on stderr when it is a terminal (`generate`, `serve`)."""
    from v4 import model

    with shard_progress() as progress:
        return model.load(path, **options.load_options(), **({"progress": progress} if progress else {}))
