"""Watching a repository: file-system events (watchdog) filtered by the index's rules and coalesced
into batches of changed paths.

Why batches: an editor's save is several events (a temp file written, then renamed over the target),
and a `git checkout` is thousands; the index and the model's context should move once per burst.
Events are dropped as they arrive when they cannot matter (`.git/`, `.v4/`, vendored, binary and
secret paths, editors' swap files), collected until the tree has been quiet for `quiet_s` (or
`max_delay_s` after the first, so a busy tree is still followed), then reduced to what changed:
each path once, temp files that came and went dropped, git-ignored paths dropped. Batches wait in a
queue, and `next_batch` hands over everything waiting as one, so nothing is lost while the consumer
is busy (an agent run).

Ignored directories are not watched at all (`watch_layout.py` says which directories are). A new
directory is watched as soon as it appears and listed, so files written into it before its watch are
not missed; a deleted one or a changed .gitignore re-computes the layout at the end of the burst.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from v4.repo_index.files import ALWAYS_IGNORED_DIRS, VENDORED_DIRS, DiscoveryConfig, ignored_paths, path_skip_reason

from .layout import heavy_name, watch_layout

# Editors' own files: swap files, backups, lock files and atomic-save temporaries (vim, emacs, JetBrains,
# VS Code, Sublime). They are never the change the user means.
EDITOR_TEMP_PATTERNS = ("*.swp", "*.swo", "*.swx", "*~", ".#*", "#*#", "4913", "*.tmp", "*.crswap",
                        "*___jb_tmp___", "*___jb_old___", ".*.kate-swp", "*.orig")
OVERFLOW_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """How changes are coalesced and which paths count."""

    quiet_s: float = 0.3  # a batch is closed once no event came for this long
    max_delay_s: float = 2.0  # ... or this long after its first event, whatever the tree does
    max_watches: int = 64  # watches (one thread each) spent keeping ignored directories unwatched
    discovery: DiscoveryConfig = DiscoveryConfig()

    def __post_init__(self) -> None:
        if self.quiet_s <= 0 or self.max_delay_s < self.quiet_s:
            raise ValueError(f"need 0 < quiet_s <= max_delay_s, got {self.quiet_s} and {self.max_delay_s}")
        if self.max_watches < 1:
            raise ValueError(f"max_watches must be at least 1, got {self.max_watches}")


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Paths (relative, POSIX) that changed in one burst; `deleted` are those gone now."""

    paths: tuple[str, ...]
    deleted: tuple[str, ...]
    first_event_s: float  # time.monotonic() of the first event: about when the user saved
    last_event_s: float
    num_events: int
    rescan: bool = False  # events were lost (kernel queue overflow): re-read the whole tree

    def merged(self, other: ChangeBatch) -> ChangeBatch:
        """One batch holding both (a path's latest state wins)."""
        paths = sorted(set(self.paths) | set(other.paths))
        gone = (set(self.deleted) - set(other.paths)) | set(other.deleted)
        return ChangeBatch(tuple(paths), tuple(sorted(gone)), min(self.first_event_s, other.first_event_s),
                           max(self.last_event_s, other.last_event_s), self.num_events + other.num_events,
                           self.rescan or other.rescan)


@dataclass(slots=True)
class _Seen:
    """What the events of one batch said about one path."""

    first: str  # the first event's kind: "created" | "modified" | "deleted" | "moved_from"
    is_dir: bool
    events: int = 1


@dataclass(slots=True)
class _Pending:
    """The burst being collected."""

    seen: dict[str, _Seen] = field(default_factory=dict)
    first_s: float = 0.0
    last_s: float = 0.0
    overflow: bool = False  # the kernel dropped events: rescan
    relayout: bool = False  # an ignored directory appeared: the watches should leave it out
    new_dirs: set[str] = field(default_factory=set)  # appeared where nothing watches them yet: watch now

    @property
    def empty(self) -> bool:
        return not (self.seen or self.overflow or self.relayout)

    def touch(self, now: float) -> None:
        if self.empty:
            self.first_s = now
        self.last_s = now


class Watcher:
    """Watches `root`; `next_batch()` returns what changed, one coalesced batch per burst."""

    def __init__(self, root: str | os.PathLike, config: WatchConfig = WatchConfig()) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"not a directory: {self.root}")
        self.config = config
        self._prefix = str(self.root) + os.sep
        self._is_git = _is_git(self.root)
        self._lock = threading.Condition()
        self._pending = _Pending()
        self._batches: queue.Queue[ChangeBatch] = queue.Queue()
        self._ignored: dict[str, bool] = {}  # git's verdict per path, until a .gitignore changes
        self._ignored_dirs: set[str] = set()
        self._watches: dict[str, object] = {}  # rel dir -> watchdog ObservedWatch
        self._layout: dict[str, bool] = {}  # rel dir -> recursive
        self._observer = None
        self._flusher: threading.Thread | None = None
        self._stopped = threading.Event()
        self._overflow_log = _OverflowLog(self._on_overflow)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching; events from now on are reported."""
        from watchdog.observers import Observer

        self._observer = Observer()
        self._reconcile()
        self._observer.start()
        for name in OVERFLOW_LOGGERS:
            logging.getLogger(name).addHandler(self._overflow_log)
        self._flusher = threading.Thread(target=self._flush_loop, name="v4-watch-flush", daemon=True)
        self._flusher.start()

    def stop(self) -> None:
        """Stop watching (idempotent); batches already made stay readable."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        with self._lock:
            self._lock.notify_all()
        for name in OVERFLOW_LOGGERS:
            logging.getLogger(name).removeHandler(self._overflow_log)
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._flusher is not None:
            self._flusher.join(timeout=5)

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def watched(self) -> dict[str, bool]:
        """The directories watched (relative; "" is the root) and whether recursively."""
        return dict(self._layout)

    @property
    def queued(self) -> int:
        """Batches closed and waiting for `next_batch`."""
        return self._batches.qsize()

    def next_batch(self, timeout: float | None = None) -> ChangeBatch | None:
        """Everything that changed since the last call, as one batch; None if nothing did within `timeout`."""
        try:
            batch = self._batches.get(timeout=timeout)
        except queue.Empty:
            return None
        while True:
            try:
                batch = batch.merged(self._batches.get_nowait())
            except queue.Empty:
                return batch

    # -- events (watchdog's dispatch thread) -----------------------------------------------------

    def dispatch(self, event: object) -> None:
        """watchdog's handler entry point: note the event's paths, if they can matter."""
        kind = event.event_type
        if kind not in ("created", "modified", "deleted", "moved", "closed"):
            return  # opened, closed without writing
        if kind == "modified" and event.is_directory:
            return  # a directory's entries changed: the entries' own events say which
        found = [(event.src_path, "moved_from" if kind == "moved" else "modified" if kind == "closed" else kind)]
        if kind == "moved" and event.dest_path:
            found.append((event.dest_path, "created"))
        now = time.monotonic()
        with self._lock:
            for path, what in found:
                rel = self._relative(os.fsdecode(path))
                if rel is None:
                    continue
                seen = self._pending.seen.get(rel)
                if seen is not None:  # a burst repeats paths: decide once per path
                    self._pending.touch(now)
                    seen.events += 1
                    seen.is_dir = seen.is_dir or event.is_directory
                elif not self._dropped(rel, event.is_directory):
                    self._pending.touch(now)
                    self._pending.seen[rel] = _Seen(what, event.is_directory)
                    if event.is_directory and what == "created" and self._layout.get(rel.rpartition("/")[0]) is False:
                        self._pending.new_dirs.add(rel)  # its files are being written now, unwatched
                elif event.is_directory and what == "created" and heavy_name(rel):
                    self._pending.touch(now)  # e.g. node_modules appeared: take it out of the watches
                    self._pending.relayout = True
            self._lock.notify_all()

    def _on_overflow(self) -> None:
        with self._lock:
            self._pending.touch(time.monotonic())
            self._pending.overflow = True
            self._lock.notify_all()

    def _relative(self, path: str) -> str | None:
        if not path.startswith(self._prefix):
            return None
        rel = path[len(self._prefix):]
        return rel.replace(os.sep, "/") if os.sep != "/" else rel

    def _dropped(self, rel: str, is_dir: bool) -> bool:
        """True for a path that cannot matter, decided from the path alone (cheap: every event asks)."""
        parts = rel.split("/")
        dirs = parts if is_dir else parts[:-1]
        if any(part in ALWAYS_IGNORED_DIRS for part in dirs):
            return True
        if not self.config.discovery.include_vendored and any(part in VENDORED_DIRS for part in dirs):
            return True
        if any(rel == d or rel.startswith(d + "/") for d in self._ignored_dirs_of(parts)):
            return True
        if is_dir:
            return False
        name = parts[-1]
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in EDITOR_TEMP_PATTERNS):
            return True
        return name != ".gitignore" and path_skip_reason(rel, self.config.discovery) is not None

    def _ignored_dirs_of(self, parts: list[str]) -> list[str]:
        """The known ignored directories that are prefixes of `parts` (a lookup per ancestor)."""
        return [d for d in ("/".join(parts[: i + 1]) for i in range(len(parts))) if d in self._ignored_dirs]

    # -- batches (the flusher thread) ----------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                fresh, burst = self._wait()
            if fresh:  # watch new directories at once, not at the end of the burst writing into them
                files = self._reconcile(fresh)
                with self._lock:
                    now = time.monotonic()
                    for rel in files:
                        if rel not in self._pending.seen:
                            self._pending.touch(now)
                            self._pending.seen[rel] = _Seen("created", False)
            elif burst is not None:
                batch = self._build(burst)  # not under the lock: it may schedule watches, and the
                if batch is not None:  # dispatch thread holds watchdog's lock while it waits for ours
                    self._batches.put(batch)

    def _wait(self) -> tuple[set[str], _Pending | None]:
        """Under the lock: wait for new directories to watch, or for a burst to end (then take it)."""
        while not self._stopped.is_set():
            if self._pending.new_dirs:
                fresh, self._pending.new_dirs = self._pending.new_dirs, set()
                return fresh, None
            if self._pending.empty:
                self._lock.wait()
                continue
            now = time.monotonic()
            due = min(self._pending.last_s + self.config.quiet_s, self._pending.first_s + self.config.max_delay_s)
            if now >= due:
                burst, self._pending = self._pending, _Pending()
                return set(), burst
            self._lock.wait(due - now)
        return set(), None

    def _build(self, pending: _Pending) -> ChangeBatch | None:
        """Reduce one burst's events to the paths that changed; re-layout the watches if directories
        came or went (or an ignore file changed), listing the files of new directories."""
        changed, gone, fresh = set(), set(), set()
        relayout = pending.overflow or pending.relayout
        for rel, seen in pending.seen.items():
            exists = os.path.lexists(self.root / rel)
            if seen.is_dir:
                relayout = relayout or self._layout_affected(rel)
                if exists and seen.first == "created":
                    fresh.add(rel)
                elif not exists:
                    gone.add(rel)  # the index forgets what it held under it
                continue
            if rel.rpartition("/")[2] == ".gitignore":
                relayout = True
                self._ignored.clear()
            if not exists and seen.first == "created":
                continue  # came and went within the burst: an editor's temp file
            (changed if exists else gone).add(rel)
        if relayout:
            changed |= self._reconcile(fresh)
        changed = {rel for rel in changed if not os.path.isdir(self.root / rel)}
        keep = self._not_ignored(changed | gone)
        changed, gone = changed & keep, gone & keep
        if not (changed or gone or pending.overflow):
            return None
        return ChangeBatch(tuple(sorted(changed | gone)), tuple(sorted(gone)), pending.first_s, pending.last_s,
                           sum(s.events for s in pending.seen.values()), pending.overflow)

    def _layout_affected(self, rel: str) -> bool:
        """A directory event changes the layout when its parent is watched non-recursively, or it
        was itself watched."""
        parent = rel.rpartition("/")[0]
        return self._layout.get(parent) is False or rel in self._layout or \
            any(d.startswith(rel + "/") for d in self._layout)

    def _not_ignored(self, rels: set[str]) -> set[str]:
        """`rels` less what git (or the .gitignore files) ignores; verdicts are remembered."""
        unknown = sorted(r for r in rels if r not in self._ignored)
        if unknown:
            ignored = ignored_paths(self.root, unknown, self._is_git)
            self._ignored.update({r: r in ignored for r in unknown})
        return {r for r in rels if not self._ignored[r]}

    # -- the watch layout ------------------------------------------------------------------------

    def _reconcile(self, fresh: set[str] = frozenset()) -> set[str]:
        """Bring the watches to the layout the tree needs now; returns the files of `fresh` directories
        (new on disk) that got a watch: they may have been written before the watch existed."""
        layout, ignored_dirs = watch_layout(self.root, self._is_git, self.config.max_watches,
                                            self.config.discovery.include_vendored)
        self._ignored_dirs = ignored_dirs
        for rel in [d for d in self._watches if self._layout.get(d) != layout.get(d)]:
            watch = self._watches.pop(rel)
            try:
                self._observer.unschedule(watch)
            except KeyError:
                pass  # its emitter already stopped with its directory
        added = []
        for rel, recursive in layout.items():
            if rel in self._watches:
                continue
            try:
                self._watches[rel] = self._observer.schedule(self, str(self.root / rel), recursive=recursive,
                                                             event_filter=_event_filter())
            except OSError:
                continue  # went away meanwhile; its parent's events say so
            if any(rel == d or rel.startswith(d + "/") for d in fresh):
                added.append((rel, recursive))
        self._layout = {rel: layout[rel] for rel in self._watches}
        return {f for rel, recursive in added for f in self._files_under(rel, recursive)}

    def _files_under(self, rel: str, recursive: bool) -> list[str]:
        found = []
        for directory, dirs, files in os.walk(self.root / rel):
            sub = Path(directory).relative_to(self.root).as_posix()
            dirs[:] = [d for d in dirs if recursive and f"{sub}/{d}" not in self._layout
                       and not self._dropped(f"{sub}/{d}", True)]
            found += [f"{sub}/{f}" for f in files if not self._dropped(f"{sub}/{f}", False)]
        return found


def _event_filter() -> list[type]:
    """The events worth a kernel wake-up: no opens, no reads, no attribute changes."""
    from watchdog.events import (DirCreatedEvent, DirDeletedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent,
                                 FileDeletedEvent, FileModifiedEvent, FileMovedEvent)

    return [FileCreatedEvent, FileDeletedEvent, FileMovedEvent, FileModifiedEvent, FileClosedEvent,
            DirCreatedEvent, DirDeletedEvent, DirMovedEvent]


def _is_git(root: Path) -> bool:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True,
                          text=True)
    return done.returncode == 0 and done.stdout.strip() == "true"


class _OverflowLog(logging.Handler):
    """watchdog reports a kernel queue overflow (events lost) only in its log; this turns that line
    into a rescan, so a huge burst costs a full re-read instead of a stale index."""

    def __init__(self, callback: object) -> None:
        super().__init__(logging.WARNING)
        self._callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._callback()

