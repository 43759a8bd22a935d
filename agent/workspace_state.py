"""v4's own records for a repository, kept where a clone cannot plant them, validated and locked.

They live in `<git dir>/v4/` (never in the work tree: a repository could commit a `.v4/` of its
choosing, and a cloned record that names `../x` or `.git/config` would have v4 write there):

* `pending.json` -- `{"version": 2, "files": {path: {"before": str | null, "after": str | null,
  "mode": int | null}}}`: v4's uncommitted changes, what each file held before and what v4 wrote;
* `commits.json` -- `{"version": 2, "commits": [{"sha", "kind": "agent" | "save", "paths", "subject"}]}`;
* `apply-journal.json` and `apply.lock` -- the apply journal and its lock (`agent/journal.py`),
  the journal present only while an apply is in flight (or was killed in one);
* `lock` -- an exclusive `flock` held by whichever v4 process is changing the records.

Everything read back is checked (types, and every path as an edit's path is checked), so even a
record edited by hand cannot make v4 touch anything outside the repository.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

STATE_VERSION = 2
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


class StateError(Exception):
    """A record v4 cannot trust or use; the message names the file and what is wrong."""


class StateStore:
    """The files under `<git dir>/v4/`; `check_rel(path)` raises for a path v4 may not touch."""

    def __init__(self, directory: Path, check_rel: Callable[[str], object]) -> None:
        self.directory = directory
        self._check_rel = check_rel
        self._depth = 0
        self._lock_fd: int | None = None

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's v4 lock (re-entrant within this object; other processes wait)."""
        if self._depth == 0:
            self._make_dir()
            fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- pending changes ------------------------------------------------------------------------

    def load_pending(self) -> dict[str, dict]:
        files = self._load("pending.json", "files", {})
        if not isinstance(files, dict):
            raise self._invalid("pending.json", "`files` is not an object")
        for rel, entry in files.items():
            self._check_path("pending.json", rel)
            if not isinstance(entry, dict) or set(entry) != {"before", "after", "mode"}:
                raise self._invalid("pending.json", f"the entry for {rel!r} is not {{before, after, mode}}")
            if not all(entry[key] is None or isinstance(entry[key], str) for key in ("before", "after")):
                raise self._invalid("pending.json", f"the contents recorded for {rel!r} are not text")
            if entry["mode"] is not None and not (isinstance(entry["mode"], int) and 0 <= entry["mode"] <= 0o7777):
                raise self._invalid("pending.json", f"the mode recorded for {rel!r} is not a file mode")
        return files

    def save_pending(self, files: dict[str, dict]) -> None:
        self._save("pending.json", "files", files)

    # -- commits --------------------------------------------------------------------------------

    def load_commits(self) -> list[dict]:
        commits = self._load("commits.json", "commits", [])
        if not isinstance(commits, list):
            raise self._invalid("commits.json", "`commits` is not a list")
        for entry in commits:
            if not isinstance(entry, dict) or not isinstance(entry.get("sha"), str) \
                    or not _SHA.match(entry["sha"]) or entry.get("kind") not in ("agent", "save") \
                    or not isinstance(entry.get("paths"), list) or not isinstance(entry.get("subject"), str):
                raise self._invalid("commits.json", f"an entry is malformed: {str(entry)[:120]}")
            for rel in entry["paths"]:
                self._check_path("commits.json", rel)
        return commits

    def save_commits(self, commits: list[dict]) -> None:
        self._save("commits.json", "commits", commits)

    # -- files ----------------------------------------------------------------------------------

    def _check_path(self, name: str, rel: object) -> None:
        if not isinstance(rel, str):
            raise self._invalid(name, f"{rel!r} is not a path")
        try:
            self._check_rel(rel)
        except Exception as exc:  # noqa: BLE001 - any refusal makes the record untrustworthy
            raise self._invalid(name, f"it names {rel!r}, which v4 may not touch ({exc})") from None

    def _invalid(self, name: str, reason: str) -> StateError:
        return StateError(f"v4's record {self.directory / name} is invalid: {reason}. Nothing was changed; "
                          "move the file aside to start over (v4's pending changes are then no longer "
                          "tracked; the work tree is untouched).")

    def _load(self, name: str, key: str, empty: dict | list) -> object:
        path = self.directory / name
        if not path.exists():
            return empty
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise self._invalid(name, f"it cannot be read ({exc})") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION or key not in data:
            raise self._invalid(name, f"it is not a version-{STATE_VERSION} record with `{key}`")
        return data[key]

    def _save(self, name: str, key: str, value: dict | list) -> None:
        """Atomically: a uniquely named temp file, fsynced, renamed over the record."""
        with self.locked():  # (which makes the directory)
            fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(json.dumps({"version": STATE_VERSION, key: value}, indent=1) + "\n")
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.directory / name)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise

    def _make_dir(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create v4's record directory {self.directory}: {exc}") from None
        if not self.directory.is_dir():
            raise StateError(f"{self.directory} is not a directory; v4 keeps its records there")
