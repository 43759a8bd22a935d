"""The prefix-state store's files: how an entry is named (the model fingerprint and the prefix keys),
which files the store owns, and how one entry is written and checked.

Keys are chained xxh3-128 hashes of (model fingerprint, token ids so far), canonical for a prefix:
the chain runs over fixed 64-token blocks, so the key at position p depends on ids[:p] alone.

The store owns only what it wrote (issue 22: `v4 engram verify` pointed at a model folder deleted its
`model.safetensors`). Its root holds a manifest, `v4-engram-store.json`, naming the format and every
entry file it wrote; verify, eviction and clear touch those entries and nothing else. A directory that
is not empty and has no manifest is someone else's: it is refused before any work.

An entry is a safetensors file whose xxh3-128 checksum covers every byte of the file except the 32 hex
digits of the checksum itself: the header, the metadata, the counters and the tensors (issue 22: a
flipped bit in a counter passed a checksum of the tensors alone and changed the next logits).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import xxhash
from filelock import FileLock
from safetensors.torch import load, save

if TYPE_CHECKING:
    from .config import V4Config
    from .engine import Engine

# The on-disk names keep the store's first name, "engram" (it was the Engram store before it was named
# apart from the Engram layer): renaming the format, the manifest or the default directory would orphan
# every store already written, which this version neither reads nor deletes.
FORMAT = "v4-engram"
FORMAT_VERSION = 3  # 2: the store owns what it lists in its manifest; the checksum covers the whole file;
# 3: states in the decoder's layout (state.py: the window as a ring, partial windows by parity)
STORE_FORMAT = "v4-engram-store"
MANIFEST = "v4-engram-store.json"
LOCK = ".lock"
_PLACEHOLDER = "0" * 32
# <model fingerprint>/<snapshots | chunks-N>/<prefix key>.safetensors: nothing else is ever an entry
_ENTRY = re.compile(r"[0-9a-f]{32}/(snapshots|chunks-[0-9]+)/[0-9a-f]{32}\.safetensors")
_HEX_DIR = re.compile(r"[0-9a-f]{32}")
HASH_BLOCK = 64  # tokens per link of the prefix-hash chain


class StoreError(RuntimeError):
    """A store file that cannot be used (reported, and deleted only if the store wrote it)."""


class StoreDirectoryError(StoreError):
    """A store directory that cannot be used: not a directory, someone else's, unreadable or read-only.
    Raised before any work, so nothing is computed and nothing changes."""


# --------------------------------------------------------------------------------------------- names

def file_digest(path: Path, memo: dict[str, str]) -> str:
    """xxh3-128 of a file's bytes, remembered by (path, size, mtime) so a 500 GB checkpoint is read once."""
    stat_result = path.stat()
    tag = f"{path.resolve()}:{stat_result.st_size}:{stat_result.st_mtime_ns}"
    if tag not in memo:
        digest = xxhash.xxh3_128()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        memo[tag] = digest.hexdigest()
    return memo[tag]


def model_fingerprint(engine: Engine, memo: dict[str, str] | None = None, ranks: int | None = None) -> str:
    """What a state depends on besides the tokens: the config, the weights (file hashes), the dtype,
    the kv format (FP8 entries are other bytes, and other keys for the layers after them) and the
    number of ranks the model is sharded over (default: the engine's; their sums round differently, so
    a state saved on N ranks is kept for N ranks; one rank's keys are those of before issue 28)."""
    from .parallel import world_of

    memo = {} if memo is None else memo
    ranks = world_of(engine.model) if ranks is None else ranks
    digest = xxhash.xxh3_128()
    digest.update(json.dumps(_config_dict(engine.model.config), sort_keys=True, default=str).encode())
    digest.update(str(engine.dtype).encode())
    digest.update(f"kv_format={engine.config.kv_format}".encode())
    checkpoint = getattr(engine, "checkpoint", None)
    if checkpoint is None:
        raise StoreError("the engine does not know its checkpoint directory; load it with model.load")
    for file in sorted(Path(checkpoint).glob("*.safetensors")):
        digest.update(file.name.encode() + file_digest(file, memo).encode())
    digest.update(f"{FORMAT}:{FORMAT_VERSION}:mtp={len(engine.model.mtp)}".encode())
    if ranks > 1:
        digest.update(f"ranks={ranks}".encode())
    return digest.hexdigest()


def _config_dict(config: V4Config) -> dict[str, object]:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "engram"}


def prefix_keys(fingerprint: str, ids: Sequence[int], positions: Sequence[int]) -> dict[int, str]:
    """The key of ids[:p] for each p in `positions` (a function of ids[:p] and the model alone)."""
    import numpy as np

    array = np.asarray(ids, dtype=np.int64).astype("<i4")
    wanted = sorted(set(positions))
    keys: dict[int, str] = {}
    chain = xxhash.xxh3_128(fingerprint.encode()).digest()
    block = 0
    for position in wanted:
        while (block + 1) * HASH_BLOCK <= position:
            chain = xxhash.xxh3_128(chain + array[block * HASH_BLOCK : (block + 1) * HASH_BLOCK].tobytes()).digest()
            block += 1
        tail = array[block * HASH_BLOCK : position].tobytes()
        keys[position] = xxhash.xxh3_128(chain + tail + position.to_bytes(8, "little")).hexdigest()
    return keys


# ------------------------------------------------------------------------------------------ entries

def _checksum_at(data: bytes | bytearray, header_end: int, checksum: str) -> int:
    """Where the checksum's digits start: the one `"checksum":"..."` of the header, or an error."""
    needle = b'"checksum":"' + checksum.encode() + b'"'
    header = bytes(data[8:header_end])
    if header.count(needle) != 1:
        raise StoreError("the header does not hold exactly one checksum")
    return 8 + header.index(needle) + len(b'"checksum":"')


def _digest(data: bytes | bytearray, start: int) -> str:
    """xxh3-128 of `data` with the checksum's 32 digits at `start` read as zeros."""
    view = memoryview(data)
    digest = xxhash.xxh3_128()
    digest.update(view[:start])
    digest.update(_PLACEHOLDER.encode())
    digest.update(view[start + 32 :])
    return digest.hexdigest()


def encode_entry(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The bytes of an entry file: safetensors with `metadata` and a checksum of every other byte."""
    data = bytearray(save(tensors, metadata={"format": FORMAT, "version": str(FORMAT_VERSION), **metadata,
                                             "checksum": _PLACEHOLDER}))
    header_end = 8 + int.from_bytes(data[:8], "little")
    start = _checksum_at(data, header_end, _PLACEHOLDER)
    data[start : start + 32] = _digest(data, start).encode()
    return bytes(data)


def decode_entry(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of an entry file's bytes; StoreError for any byte out of place."""
    if len(data) < 8:
        raise StoreError(f"truncated ({len(data)} bytes)")
    header_end = 8 + int.from_bytes(data[:8], "little")
    if header_end > len(data):
        raise StoreError("truncated: the header runs past the end of the file")
    try:
        meta = json.loads(data[8:header_end]).get("__metadata__") or {}
    except (ValueError, AttributeError) as exc:
        raise StoreError(f"unreadable header ({exc})") from exc
    checksum = meta.get("checksum")
    if not isinstance(checksum, str) or not re.fullmatch(r"[0-9a-f]{32}", checksum):
        raise StoreError("no checksum in the header")
    if _digest(data, _checksum_at(data, header_end, checksum)) != checksum:
        raise StoreError("checksum mismatch")
    if meta.get("format") != FORMAT or meta.get("version") != str(FORMAT_VERSION):
        raise StoreError(f"format {meta.get('format')} version {meta.get('version')}, "
                         f"expected {FORMAT} {FORMAT_VERSION}")
    return load(data), meta


def temp_path(path: Path) -> Path:
    """Where `path` is written before the rename: one name per entry, so a leftover is the store's too."""
    return path.with_name(f".tmp-{path.name}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_entry(path: Path, data: bytes) -> int:
    """Write atomically (temp file, then rename; the caller holds the lock): a reader sees all or none."""
    temp = temp_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        if is_file(temp):
            temp.unlink()
        raise
    return len(data)


def read_entry(path: Path) -> bytes:
    """An entry's bytes (FileNotFoundError when it was evicted meanwhile)."""
    return path.read_bytes()


def is_file(path: Path) -> bool:
    """A regular file, not a link, a directory or anything else that happens to have the name."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


# ------------------------------------------------------------------------------------ the directory

@dataclass(frozen=True, slots=True)
class StoreRoot:
    """The store directory: its manifest of owned entries, its lock, and the checks made before work."""

    directory: Path

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST

    def check(self) -> None:
        """Refuse a directory the store cannot read as its own (absent is fine: nothing to read)."""
        where = self.directory
        if not where.exists():
            if where.is_symlink():
                raise StoreDirectoryError(f"prefix-state store {where} is a broken link")
            return
        if not where.is_dir():
            raise StoreDirectoryError(f"prefix-state store {where} is a file, not a directory; "
                                      f"choose a directory (--engram-dir)")
        if self.manifest.exists() or self.manifest.is_symlink():
            self.entries()  # a manifest that cannot be read is refused here
            return
        try:
            names = sorted(os.listdir(where))
        except OSError as exc:
            raise StoreDirectoryError(f"prefix-state store {where} cannot be read ({exc.strerror})") from exc
        # another process may be creating the store: its manifest comes before any file but temporaries
        names = [name for name in names if not name.startswith((".tmp-manifest-", ".tmp-probe-"))]
        if not names or self.manifest.exists():
            return
        if all(name == LOCK or _HEX_DIR.fullmatch(name) for name in names):
            raise StoreDirectoryError(f"prefix-state store {where} holds a store of an older format (before version "
                                      f"{FORMAT_VERSION}), which this version neither reads nor deletes; remove "
                                      f"the directory (rm -r {where}) or choose another --engram-dir")
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise StoreDirectoryError(f"prefix-state store {where} is not empty and is not a prefix-state store (it holds "
                                  f"{shown}); choose an empty or new directory (--engram-dir)")

    def prepare(self) -> None:
        """Make sure the store can be written before any work: created, with a manifest, writable."""
        self.check()
        where = self.directory
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreDirectoryError(f"prefix-state store {where} cannot be created ({exc.strerror or exc})") from exc
        try:
            if not self.manifest.exists():
                self._publish([], exclusive=True)
            handle, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=where)
            os.close(handle)
            os.unlink(probe)
        except OSError as exc:
            raise StoreDirectoryError(f"prefix-state store {where} is not writable ({exc.strerror or exc}); "
                                      f"choose a writable --engram-dir, or run with --no-engram") from exc

    def lock(self) -> FileLock:
        """The lock held by writes, eviction, verify and clear (after `prepare`)."""
        return FileLock(str(self.directory / LOCK))

    def entries(self) -> set[str]:
        """The relative paths of the entries the store wrote (empty without a manifest)."""
        try:
            text = self.manifest.read_text()
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise StoreDirectoryError(f"prefix-state store manifest {self.manifest} cannot be read ({exc})") from exc
        try:
            document = json.loads(text)
            entries = document["entries"]
            if document["format"] != STORE_FORMAT or not isinstance(entries, list):
                raise ValueError("not a prefix-state store manifest")
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreDirectoryError(f"prefix-state store manifest {self.manifest} is corrupt ({exc}); remove the "
                                      f"directory (rm -r {self.directory}) or choose another --engram-dir") from exc
        if document.get("version") != FORMAT_VERSION:
            raise StoreDirectoryError(f"prefix-state store {self.directory} has format version {document.get('version')}, "
                                      f"this version reads {FORMAT_VERSION}; remove the directory or choose another "
                                      f"--engram-dir")
        strange = [e for e in entries if not isinstance(e, str) or not _ENTRY.fullmatch(e)]
        if strange:
            raise StoreDirectoryError(f"prefix-state store manifest {self.manifest} names {strange[0]!r}, which is not "
                                      f"an entry path; remove the directory or choose another --engram-dir")
        return set(entries)

    def record(self, entries: set[str]) -> None:
        """Replace the manifest's list (the caller holds the lock)."""
        self._publish(sorted(entries), exclusive=False)

    def _publish(self, entries: list[str], exclusive: bool) -> None:
        """Write the manifest atomically; `exclusive`: only if there is none yet (two first runs at once)."""
        text = json.dumps({"format": STORE_FORMAT, "version": FORMAT_VERSION, "entries": entries}, indent=0)
        handle, temp = tempfile.mkstemp(prefix=".tmp-manifest-", dir=self.directory)
        try:
            with os.fdopen(handle, "w") as out:
                out.write(text)
            if exclusive:
                with contextlib.suppress(FileExistsError):
                    os.link(temp, self.manifest)
            else:
                os.replace(temp, self.manifest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)

    def check_entry(self, path: Path) -> None:
        """Refuse before any work an entry path (or its folders) taken by something that is not a file."""
        for folder in (path.parent.parent, path.parent):
            if (folder.exists() or folder.is_symlink()) and (folder.is_symlink() or not folder.is_dir()):
                raise StoreDirectoryError(f"prefix-state store: {folder} is not a directory, where the store keeps "
                                          f"entries; move it away or choose another --engram-dir")
        if (path.exists() or path.is_symlink()) and not is_file(path):
            raise StoreDirectoryError(f"prefix-state store: {path} is not a regular file, where the store keeps an "
                                      f"entry; move it away or choose another --engram-dir")

    def relative(self, path: Path) -> str:
        return path.relative_to(self.directory).as_posix()
