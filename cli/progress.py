"""Progress bars on stderr, for the slow steps a user waits on at a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from v4.agent.options import EngineOptions
    from v4.agent.turn import TurnEvent
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


class TurnProgress:
    """How a headless turn moves, on stderr: each answer's start and end (tokens, speed), why an answer
    goes back to the model, the conversation's compaction, and, where the answer text is not shown
    (`--json`), a live count on a terminal. Without it a CPU run sat silent for minutes."""

    def __init__(self, shows_text: bool, live: bool | None = None) -> None:
        self.shows_text = shows_text  # the answer itself streams to stderr: no live count over it
        self.live = sys.stderr.isatty() if live is None else live
        self._chars = 0
        self._started = 0.0
        self._drawn = 0.0

    def __call__(self, event: TurnEvent) -> None:
        from v4.agent.turn import AnswerFinished, AnswerStarted, Compacted, CompactionFailed, Retrying, ToolRan

        if isinstance(event, AnswerStarted):
            self._chars, self._started = 0, time.perf_counter()
            self._line(f"answer {event.number}…")
        elif isinstance(event, AnswerFinished):
            speed = event.completion_tokens / event.seconds if event.seconds > 0 else 0.0
            end = "\n" if self.shows_text else ""
            self._line(f"{end}answer {event.number}: {event.completion_tokens:,} tokens in {event.seconds:.1f} s "
                       f"({speed:.1f} tokens/s)")
        elif isinstance(event, Retrying):
            self._line(f"sent back to the model: {event.reason}")
        elif isinstance(event, ToolRan):
            self._line(f"{event.name}: {event.summary}")
        elif isinstance(event, Compacted):
            self._line(f"compacted the conversation: {event.turns} older turn{'s' if event.turns != 1 else ''} "
                       f"summarised, {event.tokens_before:,} -> {event.tokens_after:,} tokens")
        elif isinstance(event, CompactionFailed):
            self._line(event.reason)

    def text(self, piece: str) -> None:
        """An answer piece: shown as it comes, or counted on a live line."""
        if self.shows_text:
            sys.stderr.write(piece)
            sys.stderr.flush()
            return
        self._chars += len(piece)
        now = time.perf_counter()
        if self.live and now - self._drawn > 0.2:
            self._drawn = now
            sys.stderr.write(f"\rv4: answering: {self._chars:,} characters, {now - self._started:.0f} s ")
            sys.stderr.flush()

    def note(self, message: str) -> None:
        """A line of its own (the prefill, the plan)."""
        self._line(message)

    def _line(self, message: str) -> None:
        clear = "\r\033[K" if self.live and not self.shows_text else ""
        sys.stderr.write(f"{clear}v4: {message}\n")
        sys.stderr.flush()
