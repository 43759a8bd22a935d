"""Write planned `FileChange`s into a repository: every path checked, all or nothing, even across a crash.

`apply_changes` never leaves a half-applied edit. Paths are checked and each file's content is
compared with what the edits were planned against before anything is written. New contents go to
temporary files beside their targets (`.name.v4-XXXXXXXX.tmp`), originals get hard-link backups
(`.name.v4-XXXXXXXX.bak`), and each temp is moved in with `os.replace` (atomic per file) right after
checking that its target still holds `before`: a save the user made while v4 was writing stops the
apply, with everything already moved put back (issue 21). A final check that no original changed
behind its backup closes the window for writes through a handle opened before the apply.

Across files the all-or-nothing holds through a crash too, when the caller passes `journal_dir`
(inside `.git/`): an intent journal (agent/journal.py describes its format) is written durably
before the first file is touched, marked committed once every file is in place, and removed when
the backups are gone. `recover` reads a journal a killed process left behind and rolls it back
(or, if it was committed, finishes removing its backups), deciding per file from content hashes;
`apply_changes` does the same first, and a lock keeps it from "recovering" a live apply.
"""

from __future__ import annotations

import os
import posixpath
import re
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from v4.agent.edits import FileChange
from v4.agent.journal import (Entry, Journal, JournalError, file_state, fsync_dir, journal_path, locked,
                              recover_journal, remove_dirs, remove_journal, sha256, spare_name, undo_change,
                              write_journal)

__all__ = ["JournalError", "PathError", "StaleChangeError", "apply_changes", "check_path", "make_reader", "recover"]


class PathError(ValueError):
    """A path the agent may not touch (outside the repository, inside .git/, ...)."""


class StaleChangeError(ValueError):
    """A file changed on disk after the edits to it were planned (or while they were being written)."""


def check_path(root: Path, rel: str) -> Path:
    """The absolute path `rel` names under `root`, after refusing anything that is not safe to write.

    Refused: empty or absolute paths, `..` leaving the root, anything in a `.git` directory, a path
    through a symbolic link that leads outside the root (or into `.git`), and one through a loop of
    symbolic links (issue 21: that used to escape as a RuntimeError traceback).
    """
    root = _resolve(root, rel)
    parts = _relative_parts(rel)
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink() and not _inside(_resolve(current, rel), root):
            raise PathError(f"refusing {rel!r}: {current.relative_to(root).as_posix()} is a symbolic link "
                            f"to {_resolve(current, rel)}, outside the repository")
    target = _resolve(root.joinpath(*parts), rel)
    if not _inside(target, root):
        raise PathError(f"refusing {rel!r}: it resolves to {target}, outside the repository")
    if _in_git_dir(target.relative_to(root).parts):
        raise PathError(f"refusing {rel!r}: it resolves into .git/, which the agent never writes")
    return target


def _resolve(path: Path, rel: str) -> Path:
    """`path.resolve()`, with a symlink loop (RuntimeError before Python 3.13, OSError after) as a PathError."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        raise PathError(f"refusing {rel!r}: {path} cannot be resolved ({exc}); is there a loop of symbolic "
                        "links?") from None


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
    """One change on its way in: its target, the bytes to write, and the temp and backup names made for it."""

    change: FileChange
    target: Path
    rel: str  # the target relative to the root, symbolic links resolved: what the journal records
    data: bytes | None = None
    temp: Path | None = None
    backup: Path | None = None
    replaced: bool = False

    def entry(self) -> Entry:
        return Entry(self.rel, self.temp.name if self.temp else None, self.backup.name if self.backup else None,
                     self.change.before is not None, _digest(self.change.before), _digest(self.data))

    def still_before(self) -> bool:
        """The file holds exactly `before` (or is still absent, for a create): safe to replace now."""
        if self.change.before is None:
            return not os.path.lexists(self.target)
        try:
            if not stat.S_ISREG(os.lstat(self.target).st_mode):
                return False
            return self.target.read_bytes() == self.change.before.encode("utf-8")
        except OSError:
            return False


def _digest(content: str | bytes | None) -> str | None:
    if content is None:
        return None
    return sha256(content.encode("utf-8") if isinstance(content, str) else content)


@dataclass
class _Transaction:
    root: Path
    pending: list[_Pending]
    journal_dir: Path | None
    made_dirs: list[Path] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    committing: bool = False

    def stage(self) -> None:
        """Everything short of touching a target: names, the journal, directories, temporary files, backups."""
        self._plan()
        self._write_journal("pending")
        for directory in self.made_dirs:
            directory.mkdir(exist_ok=True)
        for item in self.pending:
            if item.temp is not None:
                _write_temp(item.target, item.temp, item.data or b"")
            if item.backup is not None and item.change.after is not None:
                _link_backup(item.target, item.backup)
        self._sync_dirs()

    def commit(self) -> None:
        """Move each file in right after checking it is still `before`, then mark the journal committed.

        Before the mark, no original may have changed behind its backup; after it, a crash is
        finished by `recover` rather than undone (the backups it would need may be gone).
        """
        for item in self.pending:
            if not item.still_before():
                raise _stale(item.change.path)
            if item.change.after is None:
                os.replace(item.target, item.backup)
            else:
                os.replace(item.temp, item.target)
            item.replaced = True
        for item in self.pending:  # a write through a handle opened before the apply lands in the backup
            if item.backup is not None and file_state(item.backup) != _digest(item.change.before):
                raise _stale(item.change.path)
        self._sync_dirs()
        self.committing = True
        self._write_journal("committed")

    def rollback(self) -> list[str]:
        """Put every file back to `before`; returns notes on what could not be (it stays on disk to recover)."""
        notes, failed = [], False
        if self.committing:  # the committed mark may be on disk: a crash during this undo must not roll forward
            try:
                self._write_journal("pending")
            except OSError as exc:
                notes.append(f"could not mark the journal pending again: {exc}")
        for item in reversed(self.pending):
            try:
                undone = _undo(item)
            except OSError as exc:
                notes.append(f"could not restore {item.change.path}: {exc}")
                failed = True
                continue
            if undone is not None and not undone[1]:
                notes.append(undone[0])
        notes += remove_dirs(self.made_dirs)
        if self.journal_dir is not None and failed:
            notes.append(f"the journal {journal_path(self.journal_dir)} is kept: recover() finishes the undo")
        elif self.journal_dir is not None:
            try:
                remove_journal(self.journal_dir)
            except OSError as exc:
                notes.append(f"could not remove the journal {journal_path(self.journal_dir)}: {exc}")
        return notes

    def finish(self) -> None:
        """After the commit point: drop the backups, then the journal."""
        try:
            for item in self.pending:
                if item.backup is not None:
                    item.backup.unlink(missing_ok=True)
            if self.journal_dir is not None:
                remove_journal(self.journal_dir)
        except OSError:
            pass  # every file is in place; the committed journal lets recover() remove what is left

    def _plan(self) -> None:
        for item in self.pending:
            if item.change.after is not None:
                item.temp = _spare_name(item.target, "tmp")
                self._note_missing_parents(item.target.parent)
            if item.change.before is not None:
                item.backup = _spare_name(item.target, "bak")

    def _note_missing_parents(self, directory: Path) -> None:
        missing = []
        while not os.path.lexists(directory):
            missing.append(directory)
            directory = directory.parent
        self.made_dirs += [new for new in reversed(missing) if new not in self.made_dirs]

    def _write_journal(self, state: str) -> None:
        if self.journal_dir is not None:
            made = [directory.relative_to(self.root).as_posix() for directory in self.made_dirs]
            write_journal(self.journal_dir, Journal(str(self.root), state, self.created, made,
                                                    [item.entry() for item in self.pending]))

    def _sync_dirs(self) -> None:
        """With a journal, make the directory entries durable before the journal's next step relies on them."""
        if self.journal_dir is not None:
            for directory in dict.fromkeys(item.target.parent for item in self.pending):
                fsync_dir(directory)


def _undo(item: _Pending) -> tuple[str, bool] | None:
    """`undo_change`, except that a target v4 never replaced keeps whatever it holds (a save made meanwhile)."""
    entry = item.entry()
    if item.replaced or file_state(item.target) == entry.after_sha256:
        return undo_change(entry, item.target)
    for spare in (item.temp, item.backup):  # all v4 did to this file was add these
        if spare is not None:
            spare.unlink(missing_ok=True)
    return None


def _stale(path: str) -> StaleChangeError:
    return StaleChangeError(f"{path} changed on disk while v4 was writing; nothing was changed")


def apply_changes(root: Path, changes: list[FileChange], journal_dir: Path | None = None) -> list[str]:
    """Write `changes` under `root` all-or-nothing; returns the paths changed, in order.

    Raises PathError (a refused path) or StaleChangeError (a file no longer holds `before`, checked
    once before writing and again right before each file is replaced); any OSError while writing is
    raised after the tree has been restored. With `journal_dir` (a directory inside `.git/`, made if
    missing) the transaction is journaled so that `recover` can undo it after a crash, and a journal
    left by an earlier crash is recovered first (JournalError, writing nothing, if that fails).
    """
    root = _resolve(root, str(root))
    with locked(journal_dir):
        if journal_dir is not None:
            _recover_before_apply(root, journal_dir)
        pending = [item for item in _checked(root, changes) if item.change.before != item.change.after]
        if not pending:
            return []
        for item in pending:
            _verify(item)
            if item.change.after is not None:
                item.data = _keep_newlines(item.change.before, item.change.after).encode("utf-8")
        transaction = _Transaction(root, pending, journal_dir)
        try:
            transaction.stage()
            transaction.commit()
        except BaseException as exc:
            for note in transaction.rollback():
                exc.add_note(note)
            raise
        transaction.finish()
    return [item.change.path for item in pending]


def _recover_before_apply(root: Path, journal_dir: Path) -> None:
    try:
        recover_journal(root, journal_dir, lambda rel: check_path(root, rel))
    except (JournalError, OSError) as exc:
        raise JournalError(f"an earlier apply was interrupted and could not be undone, so nothing was written: "
                           f"{exc}") from exc


def recover(root: Path, journal_dir: Path) -> list[str]:
    """Undo an apply that was killed midway, from the journal it left in `journal_dir`; [] if there is none.

    Every file ends exactly as `before` (or, if the journal was committed, as `after`, the backups
    being removed); a file someone else changed since is left alone and reported. Returns lines for
    the user. A corrupt or tampered journal raises JournalError and changes nothing; a failed restore
    raises JournalError too, keeping the journal so that a later call can finish.
    """
    root = _resolve(root, str(root))
    if not journal_dir.is_dir():
        return []
    with locked(journal_dir):
        return recover_journal(root, journal_dir, lambda rel: check_path(root, rel))


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
        pending.append(_Pending(change, target, target.relative_to(root).as_posix()))
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
    """An unused hidden name beside `target`, so a crash leaves recognisable litter (and the journal names it)."""
    while True:
        candidate = target.with_name(spare_name(target.name, secrets.token_hex(4), suffix))
        if not os.path.lexists(candidate):
            return candidate


def _write_temp(target: Path, temp: Path, data: bytes) -> None:
    """`data` in the new file `temp`, with `target`'s mode (or the umask default if new)."""
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    if target.exists():
        os.chmod(temp, target.stat().st_mode & 0o7777)


def _link_backup(target: Path, backup: Path) -> None:
    """A second name for the original file (hard link; a copy where links are not supported)."""
    try:
        os.link(target, backup)
    except FileExistsError:  # a name clash is a real error; a file system without hard links is not
        raise
    except OSError:
        shutil.copy2(target, backup)
