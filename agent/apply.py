"""Write planned `FileChange`s into a repository: every path checked, all or nothing.

`apply_changes` never leaves a half-applied edit: paths are checked and each file's current content
is compared with what the edits were planned against before anything is written; new contents go to
temporary files beside their targets and are moved in with `os.replace` (atomic per file); if
anything fails on the way, the files already moved are put back from hard-link backups and the
directories made for new files are removed, so the tree ends as it began.
"""

from __future__ import annotations

import os
import posixpath
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from v4.agent.edits import FileChange


class PathError(ValueError):
    """A path the agent may not touch (outside the repository, inside .git/, ...)."""


class StaleChangeError(ValueError):
    """A file changed on disk after the edits to it were planned."""


def check_path(root: Path, rel: str) -> Path:
    """The absolute path `rel` names under `root`, after refusing anything that is not safe to write.

    Refused: empty or absolute paths, `..` leaving the root, anything in a `.git` directory, and a
    path through a symbolic link that leads outside the root (or into `.git`).
    """
    root = root.resolve()
    parts = _relative_parts(rel)
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink() and not _inside(current.resolve(), root):
            raise PathError(f"refusing {rel!r}: {current.relative_to(root).as_posix()} is a symbolic link "
                            f"to {current.resolve()}, outside the repository")
    target = root.joinpath(*parts).resolve()
    if not _inside(target, root):
        raise PathError(f"refusing {rel!r}: it resolves to {target}, outside the repository")
    if _in_git_dir(target.relative_to(root).parts):
        raise PathError(f"refusing {rel!r}: it resolves into .git/, which the agent never writes")
    return target


def _relative_parts(rel: str) -> tuple[str, ...]:
    """`rel` split into components, once the lexical checks (absolute, `..`, `.git`) have passed."""
    if not rel.strip() or "\x00" in rel:
        raise PathError(f"refusing {rel!r}: not a file path")
    text = rel.replace("\\", "/")
    if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", text):
        raise PathError(f"refusing {rel!r}: absolute paths are not allowed; give the path relative to the "
                        "repository root")
    if _in_git_dir(PurePosixPath(text).parts):
        raise PathError(f"refusing {rel!r}: files inside .git/ are never edited")
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        raise PathError(f"refusing {rel!r}: `..` leads outside the repository")
    if normal == ".":
        raise PathError(f"refusing {rel!r}: that is the repository root, not a file")
    return PurePosixPath(normal).parts


def _in_git_dir(parts: tuple[str, ...]) -> bool:
    return any(part.casefold() == ".git" for part in parts)


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def make_reader(root: Path) -> Callable[[str], str | None]:
    """A `read` for `plan_changes`: checked paths, exact text (newlines untouched), None if absent."""
    root = root.resolve()

    def read(rel: str) -> str | None:
        target = check_path(root, rel)
        if not target.exists():
            return None
        if target.is_dir():
            raise PathError(f"{rel!r} is a directory, not a file")
        return _decode(target.read_bytes(), rel)

    return read


def _decode(data: bytes, rel: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{rel!r} is not UTF-8 text, so it cannot be edited") from None


@dataclass
class _Pending:
    """One change on its way in: its target, and the temporary and backup files made for it."""

    change: FileChange
    target: Path
    data: bytes | None = None
    temp: Path | None = None
    backup: Path | None = None
    done: bool = False


@dataclass
class _Transaction:
    pending: list[_Pending]
    made_dirs: list[Path] = field(default_factory=list)

    def stage(self) -> None:
        """Everything short of touching a target: directories, temporary files, backups."""
        for item in self.pending:
            if item.change.after is not None:
                self._make_parents(item.target.parent)
                item.temp = _write_temp(item.target, item.data or b"")
            if item.change.before is not None and item.change.after is not None:
                item.backup = _link_backup(item.target)

    def commit(self) -> None:
        for item in self.pending:
            if item.change.after is None:
                item.backup = _spare_name(item.target, "bak")
                os.replace(item.target, item.backup)
            else:
                assert item.temp is not None
                os.replace(item.temp, item.target)
                item.temp = None
            item.done = True

    def rollback(self) -> list[str]:
        """Undo in reverse; returns what could not be undone (each is also left on disk to recover)."""
        problems = []
        for item in reversed(self.pending):
            try:
                _undo(item)
            except OSError as exc:
                problems.append(f"{item.change.path}: {exc}")
        for directory in reversed(self.made_dirs):
            try:
                directory.rmdir()
            except OSError as exc:
                problems.append(f"{directory}: {exc}")
        return problems

    def finish(self) -> None:
        for item in self.pending:
            if item.backup is not None:
                item.backup.unlink(missing_ok=True)

    def _make_parents(self, directory: Path) -> None:
        missing = []
        while not directory.exists():
            missing.append(directory)
            directory = directory.parent
        for new in reversed(missing):
            new.mkdir()
            self.made_dirs.append(new)


def _undo(item: _Pending) -> None:
    if item.temp is not None:
        item.temp.unlink(missing_ok=True)
        item.temp = None
    if item.done and item.change.before is None:
        item.target.unlink(missing_ok=True)
    elif item.done and item.backup is not None:
        os.replace(item.backup, item.target)
        item.backup = None
    if item.backup is not None:  # staged but never used: the original is still in place
        item.backup.unlink(missing_ok=True)
        item.backup = None
    item.done = False


def apply_changes(root: Path, changes: list[FileChange]) -> list[str]:
    """Write `changes` under `root` all-or-nothing; returns the paths changed, in order.

    Raises PathError (a refused path) or StaleChangeError (a file no longer holds `before`) before
    writing anything; any OSError while writing is raised after the tree has been restored.
    """
    root = root.resolve()
    pending = [item for item in _checked(root, changes) if item.change.before != item.change.after]
    for item in pending:
        _verify(item)
        if item.change.after is not None:
            item.data = _keep_newlines(item.change.before, item.change.after).encode("utf-8")
    transaction = _Transaction(pending)
    try:
        transaction.stage()
        transaction.commit()
    except BaseException as exc:
        for problem in transaction.rollback():
            exc.add_note(f"could not restore {problem}")
        raise
    transaction.finish()
    return [item.change.path for item in pending]


def _checked(root: Path, changes: list[FileChange]) -> list[_Pending]:
    """A _Pending per change; one PathError naming every refused or repeated path."""
    problems, pending, seen = [], [], set()
    for change in changes:
        try:
            target = check_path(root, change.path)
        except PathError as exc:
            problems.append(str(exc))
            continue
        if target in seen:
            problems.append(f"refusing {change.path!r}: another change already writes that file")
        seen.add(target)
        pending.append(_Pending(change, target))
    if problems:
        raise PathError("; ".join(problems))
    return pending


def _verify(item: _Pending) -> None:
    """The file must still be what the change was planned against."""
    path, before = item.change.path, item.change.before
    if before is None:
        if os.path.lexists(item.target):
            raise StaleChangeError(f"{path} now exists; the edit that creates it was planned without it")
        return
    if not item.target.is_file():
        raise StaleChangeError(f"{path} is no longer a file; the edits to it were planned against its old content")
    try:
        current = item.target.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        current = None
    if current != before:
        raise StaleChangeError(f"{path} changed on disk after the edits to it were planned; plan them again")


def _keep_newlines(before: str | None, after: str) -> str:
    """CRLF for a file that was CRLF throughout, even if `after` came back with bare LFs."""
    if before and "\r\n" in before and before.count("\r\n") == before.count("\n"):
        return re.sub(r"(?<!\r)\n", "\r\n", after)
    return after


def _spare_name(target: Path, suffix: str) -> Path:
    """An unused name beside `target`, hidden, so a crash leaves recognisable litter."""
    while True:
        candidate = target.with_name(f".{target.name}.v4-{secrets.token_hex(4)}.{suffix}")
        if not os.path.lexists(candidate):
            return candidate


def _write_temp(target: Path, data: bytes) -> Path:
    """`data` in a new file beside `target`, with `target`'s mode (or the umask default if new)."""
    temp = _spare_name(target, "tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            os.chmod(temp, target.stat().st_mode & 0o7777)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _link_backup(target: Path) -> Path:
    """A second name for the original file (hard link; a copy where links are not supported)."""
    backup = _spare_name(target, "bak")
    try:
        os.link(target, backup)
    except OSError:
        shutil.copy2(target, backup)
    return backup
