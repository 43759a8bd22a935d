"""The on-disk index cache: parses by content hash, token ids by segment.

It lives in git's own directory, `<git common dir>/v4/index-cache/`, when the root is in a git
repository: a clone cannot plant files there, while a committed `.v4/` arrives with every clone with
cache rows chosen by someone else (issue 21). Outside git it lives in `<root>/.v4/`. Worktrees share
one cache, which is safe because every row is keyed by content.

Keyed by content (sha256), not mtime: the bytes are read anyway to render segments, and a hash
never mistakes a same-size edit within one mtime tick for no change.

SQLite (one file, transactional, safe with a second process) rather than one file per entry. The
directory holds a `.gitignore` of `*`, so git ignores the work-tree fallback without touching the
user's own ignore file. Values are JSON and raw int32 arrays, never pickle: a cache file must not be
able to run code, and what is read is checked before use. Any error (corrupt, unreadable, read-only,
`.v4` a file or a symlink) warns once and falls back to memory: the cache never fails the index.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path

from .files import V4_DIR

CACHE_VERSION = 2
CACHE_DIR = V4_DIR  # under the root, outside git only
GIT_CACHE_DIR = Path("v4", "index-cache")  # under the git common dir
GIT_TIMEOUT_S = 60
# What a query can raise: SQLite's own errors, and a key that is not UTF-8 (a path with surrogate
# escapes, should one get past discovery), which may degrade the cache but never fail the index.
DB_ERRORS = (sqlite3.Error, UnicodeError)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS symbols (sha256 TEXT, language TEXT, data TEXT, PRIMARY KEY (sha256, language));
CREATE TABLE IF NOT EXISTS tokens (key TEXT PRIMARY KEY, ids BLOB);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class CacheLocationError(OSError):
    """`root` is in a git repository that git will not describe, so no cache directory is trusted."""


def cache_dir(root: Path) -> Path:
    """The directory of `root`'s index cache: in the git common dir inside git, `<root>/.v4` outside.

    Raises CacheLocationError when git fails although a `.git` lies at or above `root` (git missing,
    or refusing a repository owned by someone else): `<root>/.v4` may then be a planted one.
    """
    root = Path(root)
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--git-common-dir"],
                              capture_output=True, timeout=GIT_TIMEOUT_S)
        problem = (os.fsdecode(done.stderr).strip() or f"git exited with {done.returncode}").splitlines()[0]
    except (OSError, subprocess.TimeoutExpired) as exc:
        done, problem = None, str(exc)
    if done is not None and done.returncode == 0:
        common = os.fsdecode(done.stdout).removesuffix("\n")  # bytes: the path need not be UTF-8
        return Path(os.path.normpath(root / common)) / GIT_CACHE_DIR  # relative output is relative to root
    if any(os.path.lexists(directory / ".git") for directory in (root, *root.parents)):
        raise CacheLocationError(f"git cannot read the repository holding {root} ({problem})")
    return root / CACHE_DIR


class IndexCache:
    """Key-value tables over SQLite; every method is total: on error it warns and degrades."""

    def __init__(self, root: Path | None, warn: Callable[[str], None]) -> None:
        """`root` None: a cache in memory only (`--no-cache`)."""
        self._warn = warn
        self._warned = False
        self.path: Path | None = None
        if root is not None:
            try:
                self.path = cache_dir(root) / f"index-v{CACHE_VERSION}.sqlite"
            except CacheLocationError as exc:
                self._report(f"index cache not used: {exc}; caching in memory only")
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.path is not None:
            try:
                self._prepare(self.path.parent)
            except OSError as exc:
                self._report(f"index cache directory {self.path.parent} unusable ({exc}); caching in memory only")
                return self._connect(Path(":memory:"))
            try:
                return self._connect(self.path)
            except (OSError, sqlite3.Error) as exc:
                self._report(f"index cache {self.path} unusable ({exc}); rebuilding it")
                try:
                    self.path.unlink(missing_ok=True)
                    return self._connect(self.path)
                except (OSError, sqlite3.Error) as again:
                    self._report(f"index cache {self.path} cannot be rebuilt ({again}); using memory")
        return self._connect(Path(":memory:"))

    def _prepare(self, directory: Path) -> None:
        """Create `directory` and drop other versions' files; OSError when it cannot be ours."""
        if directory.is_symlink():  # a planted `.v4` -> elsewhere must not make us write (or delete) there
            raise OSError(f"{directory} is a symbolic link")
        directory.mkdir(parents=True, exist_ok=True)  # FileExistsError when `.v4` is a file
        ignore = directory / ".gitignore"
        if not os.path.lexists(ignore):  # lexists: never write through a dangling link
            ignore.write_text("# v4's cache: never committed\n*\n")
        for stale in directory.glob("index-v*.sqlite*"):  # other versions' files, and links SQLite would follow
            if stale.is_symlink() or not stale.name.startswith(self.path.name):
                stale.unlink(missing_ok=True)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), timeout=10, check_same_thread=False)
        db.executescript(_SCHEMA)
        db.execute("SELECT count(*) FROM symbols").fetchone()  # corrupt files fail here, not later
        return db

    def _report(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            self._warn(message)

    def _fail(self, exc: Exception) -> None:
        self._report(f"index cache error ({exc}); continuing without it")
        self._db = self._connect(Path(":memory:"))

    def symbols(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], object]:
        """(sha256, language) -> the decoded JSON stored for it, for the keys present."""
        found: dict[tuple[str, str], object] = {}
        try:
            wanted = set(keys)
            for sha, language, data in self._select("symbols", "sha256", sorted({h for h, _ in keys}),
                                                    "sha256, language, data"):
                if (sha, language) not in wanted:
                    continue
                try:
                    found[sha, language] = json.loads(data)
                except (ValueError, TypeError, RecursionError):
                    continue  # a damaged row (not JSON, not text, nested without end) is re-parsed
        except DB_ERRORS as exc:
            self._fail(exc)
        return found

    def put_symbols(self, rows: Iterable[tuple[str, str, object]]) -> None:
        self._write("INSERT OR REPLACE INTO symbols VALUES (?, ?, ?)",
                    ((h, l, json.dumps(d, separators=(",", ":"))) for h, l, d in rows))

    def tokens(self, keys: list[str]) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        try:
            for key, blob in self._select("tokens", "key", keys, "key, ids"):
                ids = array("i")
                try:
                    ids.frombytes(blob)
                except (TypeError, ValueError):
                    continue
                if sys.byteorder != "little":
                    ids.byteswap()
                found[key] = ids.tolist()
        except DB_ERRORS as exc:
            self._fail(exc)
        return found

    def put_tokens(self, rows: Iterable[tuple[str, list[int]]]) -> None:
        def encoded(ids: list[int]) -> bytes:
            packed = array("i", ids)
            if sys.byteorder != "little":
                packed.byteswap()
            return packed.tobytes()

        self._write("INSERT OR REPLACE INTO tokens VALUES (?, ?)", ((k, encoded(v)) for k, v in rows))

    def meta(self, key: str) -> str | None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        except DB_ERRORS as exc:
            self._fail(exc)
            return None
        return None if row is None else row[0]

    def put_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(key, value)])

    def _select(self, table: str, key_sql: str, keys: list[str], columns: str) -> list[tuple]:
        rows: list[tuple] = []
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows += self._db.execute(f"SELECT {columns} FROM {table} WHERE {key_sql} IN ({marks})", chunk).fetchall()
        return rows

    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        try:
            with self._db:
                self._db.executemany(sql, rows)
        except DB_ERRORS as exc:
            self._fail(exc)

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error:
            pass
