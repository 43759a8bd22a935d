"""The intent journal of one apply, and the per-file undo that rollback and crash recovery share.

`apply_changes` writes a journal before it touches the work tree, so that a process killed halfway
(SIGKILL, power loss) leaves enough on disk to put every file back. One JSON file,
`<journal_dir>/apply-journal.json`, replaced atomically (temp + fsync + `os.replace` + directory
fsync); `journal_dir` lives inside `.git/`, where a clone cannot plant one:

    {"format": "v4-apply-journal", "version": 1, "root": "/abs/repo", "state": "pending",
     "created": "2025-01-01T12:00:00+00:00", "made_dirs": ["new", "new/deep"],
     "changes": [{"path": "pkg/a.py", "temp": ".a.py.v4-1f2e3d4c.tmp", "backup": ".a.py.v4-9a8b7c6d.bak",
                  "existed": true, "before_sha256": "<hex>", "after_sha256": "<hex>"}, ...]}

`path` is relative to `root` with symbolic links already resolved; `temp` and `backup` are names in
the same directory (null when the change needs none: a delete writes no temp, a create backs up
nothing); `after_sha256` is null for a delete. `state` is "pending" until every file is in place and
"committed" once the backups are only waiting to be removed: a pending journal is rolled back, a
committed one rolled forward (its backups may already be gone). `made_dirs` lists, parents first,
the directories made for new files; a rollback removes them while they are empty.

`undo_change` decides from content hashes alone, so it is correct whichever step a crash stopped at,
and it never destroys content that exists nowhere else: a file that is neither `before` nor `after`
(someone else wrote it) is left alone, and so is the backup holding its original content.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

JOURNAL_NAME = "apply-journal.json"
LOCK_NAME = "apply.lock"
FORMAT = "v4-apply-journal"
VERSION = 1
STATES = ("pending", "committed")
_SHA = re.compile(r"[0-9a-f]{64}")
_SPARE = re.compile(r"\.(?P<name>.+)\.v4-[0-9a-f]{8}\.(?P<suffix>tmp|bak)")
_NOT_A_FILE = ""  # the state of a path that exists but is no regular file (never a sha256)


class JournalError(ValueError):
    """A journal that cannot be trusted or processed: unreadable, malformed, tampered with or locked."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of the transaction, as the journal records it."""

    path: str
    temp: str | None
    backup: str | None
    existed: bool
    before_sha256: str | None
    after_sha256: str | None


@dataclass(frozen=True, slots=True)
class Journal:
    """What an apply intends to do, enough to undo it from disk alone."""

    root: str
    state: str
    created: str
    made_dirs: list[str]
    changes: list[Entry]


def journal_path(journal_dir: Path) -> Path:
    return journal_dir / JOURNAL_NAME


def spare_name(target_name: str, tag: str, suffix: str) -> str:
    """The hidden sibling name of a temporary or backup file, so litter is recognisable."""
    return f".{target_name}.v4-{tag}.{suffix}"


def is_spare_of(name: str, target_name: str, suffix: str) -> bool:
    """True if `name` is a temporary (`tmp`) or backup (`bak`) sibling name of `target_name`."""
    found = _SPARE.fullmatch(name)
    return found is not None and found["name"] == target_name and found["suffix"] == suffix


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_state(path: Path) -> str | None:
    """sha256 of a regular file's bytes; None if nothing is there; "" for anything else (directory, ...)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(mode):
        return _NOT_A_FILE
    try:
        return sha256(path.read_bytes())
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def locked(journal_dir: Path | None) -> Iterator[None]:
    """Hold the journal directory's lock, so a live apply is never "recovered" by another process.

    An flock dies with its process, so a SIGKILLed apply leaves no stale lock behind.
    """
    if journal_dir is None:
        yield
        return
    import fcntl  # POSIX only; imported here so that the module itself imports anywhere

    journal_dir.mkdir(parents=True, exist_ok=True)
    lock = journal_dir / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JournalError(f"another v4 process is applying changes in this repository "
                               f"(it holds {lock}); try again when it has finished") from None
        yield
    finally:
        os.close(fd)


def write_journal(journal_dir: Path, journal: Journal) -> None:
    """Replace the journal atomically and durably: it must be on disk before the files it protects change."""
    journal_dir.mkdir(parents=True, exist_ok=True)
    target = journal_path(journal_dir)
    temp = target.with_name(target.name + ".tmp")  # fixed name: a crash here leaves nothing new to find
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"format": FORMAT, "version": VERSION, "root": journal.root, "state": journal.state,
                   "created": journal.created, "made_dirs": journal.made_dirs,
                   "changes": [asdict(entry) for entry in journal.changes]}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, target)
    fsync_dir(journal_dir)


def remove_journal(journal_dir: Path) -> None:
    """The transaction is over (done or undone): forget it, and any half-written journal."""
    target = journal_path(journal_dir)
    target.unlink(missing_ok=True)
    target.with_name(target.name + ".tmp").unlink(missing_ok=True)
    fsync_dir(journal_dir)


def read_journal(journal_dir: Path) -> Journal | None:
    """The journal left in `journal_dir`, or None; JournalError naming the file if it is not a valid one.

    Only the format is checked here; the caller checks every path against its repository.
    """
    path = journal_path(journal_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise JournalError(f"cannot read the apply journal {path}: {exc}") from None
    try:
        data = json.loads(text)
        return _parse(data)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise JournalError(f"the apply journal {path} is corrupt ({exc}); nothing was changed. Check the files "
                           f"it names by hand, then delete it") from None


def _parse(data: object) -> Journal:
    _expect(isinstance(data, dict), "not a JSON object")
    _expect(data.get("format") == FORMAT and data.get("version") == VERSION, "unknown format or version")
    _expect(data.get("state") in STATES, f"state must be one of {STATES}")
    for key in ("root", "created"):
        _expect(isinstance(data.get(key), str), f"{key!r} must be a string")
    made_dirs, changes = data.get("made_dirs"), data.get("changes")
    _expect(isinstance(made_dirs, list) and all(isinstance(d, str) for d in made_dirs),
            "'made_dirs' must be a list of strings")
    _expect(isinstance(changes, list), "'changes' must be a list")
    return Journal(data["root"], data["state"], data["created"], made_dirs, [_entry(item) for item in changes])


def _entry(item: object) -> Entry:
    _expect(isinstance(item, dict) and set(item) == set(Entry.__slots__), f"bad change record {item!r}")
    entry = Entry(**item)
    _expect(isinstance(entry.path, str) and isinstance(entry.existed, bool), f"bad change record {item!r}")
    for name, suffix in ((entry.temp, "tmp"), (entry.backup, "bak")):
        _expect(name is None or (isinstance(name, str) and is_spare_of(name, Path(entry.path).name, suffix)),
                f"{name!r} is not a .{suffix} file beside {entry.path!r}")
    for digest in (entry.before_sha256, entry.after_sha256):
        _expect(digest is None or (isinstance(digest, str) and _SHA.fullmatch(digest) is not None),
                f"bad sha256 {digest!r} for {entry.path!r}")
    _expect(entry.existed == (entry.before_sha256 is not None), f"{entry.path!r}: 'existed' contradicts its hash")
    _expect((entry.after_sha256 is None) == (entry.temp is None), f"{entry.path!r}: 'temp' contradicts its hash")
    _expect(entry.existed or entry.backup is None, f"{entry.path!r}: a new file has no backup")
    return entry


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def undo_change(entry: Entry, target: Path) -> tuple[str, bool] | None:
    """Put one file back to `before`, judged by content hashes alone; None if there was nothing to undo.

    Otherwise a line for the user and whether the file is now exactly `before` (False: it was left
    alone because someone else changed it, or its backup is missing). Safe at any point of a crash
    and safe to repeat; raises OSError if a restore fails.
    """
    temp = target.with_name(entry.temp) if entry.temp else None
    backup = target.with_name(entry.backup) if entry.backup else None
    if temp is not None:
        temp.unlink(missing_ok=True)  # a temp only ever holds (part of) `after`, which nobody needs now
    state = file_state(target)
    if backup is not None and _same_file(backup, target):
        backup.unlink()  # only a second name of the file, so v4 never moved anything in here
        return None if state == entry.before_sha256 else (f"{entry.path}: left as it is (changed by someone "
                                                          "else while v4 was writing)", False)
    has_backup = backup is not None and os.path.lexists(backup)
    if not entry.existed:
        if state is None:
            return None
        if state == entry.after_sha256:
            target.unlink()
            return f"{entry.path}: removed (the interrupted apply had created it)", True
        return f"{entry.path}: left as it is (it is not what v4 wrote, so someone else made it)", False
    if state == entry.before_sha256:
        if has_backup and file_state(backup) != entry.before_sha256:
            return f"{entry.path}: unchanged; kept {backup.name} beside it (it differs from the file)", False
        if has_backup:
            backup.unlink()
        return None
    if state == entry.after_sha256 or (state is None and entry.after_sha256 is None):
        if not has_backup:
            return f"{entry.path}: could not be restored: its backup {entry.backup} is missing", False
        os.replace(backup, target)
        return f"{entry.path}: restored" + (" (the interrupted apply had deleted it)" if state is None else ""), True
    kept = f"; its original is kept in {backup.name}" if has_backup else ""
    return f"{entry.path}: left as it is (changed by someone else since v4 wrote it){kept}", False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def remove_spares(entry: Entry, target: Path) -> int:
    """Roll forward: delete the temp and backup the journal names for this file; returns how many there were."""
    removed = 0
    for name in (entry.temp, entry.backup):
        if name is not None and os.path.lexists(target.with_name(name)):
            target.with_name(name).unlink()
            removed += 1
    return removed


def remove_dirs(made_dirs: list[Path]) -> list[str]:
    """Remove the directories an apply made, deepest first, while they are empty; notes on those left."""
    notes = []
    for directory in reversed(made_dirs):
        try:
            directory.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            notes.append(f"left directory {directory}: {exc.strerror}")
    return notes


def recover_journal(root: Path, journal_dir: Path, check: Callable[[str], Path]) -> list[str]:
    """Finish the transaction a killed apply left in `journal_dir` (the caller holds the lock); lines for the user.

    `check` maps a repository path to its absolute target or raises ValueError (a refused path):
    the journal could have been tampered with, so every path in it goes through it first.
    """
    journal = read_journal(journal_dir)
    if journal is None:
        remove_journal(journal_dir)  # at most a half-written journal: the apply had not touched anything
        return []
    source = journal_path(journal_dir)
    targets = _targets(root, journal, source, check)
    if journal.state == "committed":
        removed = sum(remove_spares(entry, target) for entry, target in zip(journal.changes, targets))
        remove_journal(journal_dir)
        return [f"an apply from {journal.created} had finished writing {len(targets)} file(s) when it was "
                f"interrupted; removed {removed} backup file(s) it left"]
    lines = [f"rolled back an apply from {journal.created} that was interrupted before it finished"]
    try:
        for entry, target in reversed(list(zip(journal.changes, targets))):
            undone = undo_change(entry, target)
            if undone is not None:
                lines.append(undone[0])
    except OSError as exc:
        raise JournalError(f"could not finish undoing the apply recorded in {source}: {exc}; the journal is "
                           "kept so that recovery can be run again") from exc
    lines += remove_dirs([root / rel for rel in journal.made_dirs])
    remove_journal(journal_dir)
    return lines


def _targets(root: Path, journal: Journal, source: Path, check: Callable[[str], Path]) -> list[Path]:
    """The target of each change in the journal, once every path in it (made_dirs too) passed `check`."""
    if journal.root != str(root):
        raise JournalError(f"the apply journal {source} was written for {journal.root}, not {root}; nothing "
                           "was changed")
    targets: list[Path] = []
    for rel in [entry.path for entry in journal.changes] + journal.made_dirs:
        try:
            target = check(rel)
        except ValueError as exc:
            raise JournalError(f"the apply journal {source} names a path v4 may not touch: {exc}; nothing was "
                               "changed") from None
        if target != root.joinpath(rel) or target in targets:
            raise JournalError(f"the apply journal {source} names {rel!r}, which is not a plain path it could "
                               "have written; nothing was changed")
        targets.append(target)
    return targets[:len(journal.changes)]
