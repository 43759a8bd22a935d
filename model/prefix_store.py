"""The prefix-state store: decode states of prefilled prompts, kept in memory and on disk, so that a
new session (tomorrow, after edits) resumes from the longest prefix it has seen instead of prefilling
the whole repository again. (Not the Engram layer of `engram.py`: the store keeps any model's states.)

Entries are keyed by prefix (`prefix_store_files.prefix_keys`): the key at position p depends on
ids[:p] and the model alone.

A snapshot at position p stores what only that point has: every layer's sliding window, partial
windows, CSA overlap halves, Engram context, the MTP pending streams, the last logits, and the
compressed entries after the last whole chunk. Compressed entries are append-only, so the entries of
each whole chunk of `chunk_tokens` tokens are stored once, in a chunk file keyed by the prefix hash
at the chunk's end, and shared by every snapshot that extends that prefix.

An FP8 state (kv_format "fp8") is stored as it is held: uint8 packed rows, float8_e4m3fn indexer keys
and their float32 scales, which safetensors keeps bit for bit; the fingerprint names the kv format,
so a snapshot only ever loads into a state of its own format.

Files are safetensors entries written and checked by `prefix_store_files`: the store owns only the
entries its manifest lists, and each entry's checksum covers every byte but its own digits. A file that
is truncated, corrupt, of another model or format is reported once, deleted if the store wrote it, and
recomputed, never loaded. Writes and eviction (LRU by access time, under `max_bytes`) hold a file lock
on the store, so concurrent processes can share it. A misdirected, foreign or read-only directory is
refused (`StoreDirectoryError`) before any work.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from filelock import FileLock
from safetensors import SafetensorError

from .prefix_snapshot import chunk_tensors, restore, snapshot_tensors
from .prefix_store_files import (FORMAT, FORMAT_VERSION, StoreDirectoryError, StoreError, StoreRoot, decode_entry,
                                 encode_entry, is_file, model_fingerprint, prefix_keys, read_entry, temp_path,
                                 write_entry)
from .state import DecodeState

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["FORMAT", "FORMAT_VERSION", "PrefillStats", "PrefixStore", "StoreDirectoryError", "StoreError", "Verified",
           "default_store_dir", "model_fingerprint", "prefix_keys"]
DEFAULT_MAX_BYTES = 20 * 10**9
OTHER_RANKS = (1, 2, 4, 8)  # rank counts whose states a cold prefill looks for, to say why it does not load them


@dataclass(slots=True)
class PrefillStats:
    """How one prefill went, whoever ran it (the store, the runner, a stepped background prefill): what
    was found prefilled, what was computed, and where the time went. The one type for it."""

    tokens: int = 0  # the prompt's length
    reused_tokens: int = 0  # found prefilled already: in the state or the store
    computed_tokens: int = 0
    held_tokens: int = 0  # how much of the prompt the state holds now (all of it unless cancelled)
    load_s: float = 0.0  # reading snapshots from the store
    prefill_s: float = 0.0  # computing the rest
    seconds: float = 0.0  # the whole call
    from_store: bool = False  # it went through the store (a cold start), whatever it found there
    snapshots_written: int = 0
    store_bytes: int = 0  # bytes the store wrote for it
    cancelled: bool = False  # a stepped prefill that gave way before the end

    def to_json(self) -> dict[str, int | float | bool]:
        return {"tokens": self.tokens, "reused_tokens": self.reused_tokens, "computed_tokens": self.computed_tokens,
                "held_tokens": self.held_tokens, "load_s": round(self.load_s, 4),
                "prefill_s": round(self.prefill_s, 4), "seconds": round(self.seconds, 4),
                "from_store": self.from_store, "snapshots_written": self.snapshots_written,
                "store_bytes": self.store_bytes, "cancelled": self.cancelled}


@dataclass(frozen=True, slots=True)
class Verified:
    """What `PrefixStore.verify` checked, and the entries it found bad (and deleted), each with why."""

    checked: int = 0  # entry files read and checked, every byte
    bytes: int = 0
    bad: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"checked_files": self.checked, "checked_bytes": self.bytes, "bad_files_deleted": self.bad,
                "ok": not self.bad}


def default_store_dir() -> Path:
    """`$V4_ENGRAM_DIR`, else the platform's per-user cache (`~/.cache/v4/engram-v3` on Linux). The
    default is named by format version, like Aider's tag cache, so an upgrade starts a new store instead
    of refusing the old one (which it can neither read nor prove it wrote). The names keep the store's
    first name (see `prefix_store_files.FORMAT`) so that existing stores stay valid."""
    configured = os.environ.get("V4_ENGRAM_DIR")
    if configured:
        return Path(configured)
    import platformdirs

    return Path(platformdirs.user_cache_dir("v4")) / f"engram-v{FORMAT_VERSION}"


# ----------------------------------------------------------------------------------------- the store

@dataclass
class PrefixStore:
    """Prefix states of one or more models: an in-memory LRU over a size-limited directory."""

    directory: Path = field(default_factory=default_store_dir)
    max_bytes: int = DEFAULT_MAX_BYTES
    memory_bytes: int = 2 * 10**9
    chunk_tokens: int = 4096
    warn: Callable[[str], None] | None = None
    _memory: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _memory_used: int = 0
    _reported: set = field(default_factory=set, repr=False)
    _digests: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.root = StoreRoot(self.directory)
        self.root.check()  # a file, a foreign directory or an old store: refused before any work

    def prepare(self) -> None:
        """Refuse now, before a model is loaded or a prefill computed, a store that cannot be written."""
        self.root.prepare()

    # -- files
    def _lock(self) -> FileLock:
        return self.root.lock()

    @property
    def _chunk_kind(self) -> str:
        """Chunks of another width hold other entries under the same prefix key: keep them apart."""
        return f"chunks-{self.chunk_tokens}"

    def _path(self, fingerprint: str, kind: str, key: str) -> Path:
        return self.directory / fingerprint[:32] / kind / f"{key}.safetensors"

    def _report(self, message: str) -> None:
        if message not in self._reported:
            self._reported.add(message)
            if self.warn is not None:
                self.warn(message)

    def _write(self, path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> int:
        """Write atomically; 0 bytes (and a report) when the disk refuses: the store stays consistent."""
        try:
            return write_entry(path, encode_entry(tensors, {k: json.dumps(v) for k, v in meta.items()}))
        except (OSError, SafetensorError) as exc:
            self._report(f"prefix-state store: cannot write {path.name} ({exc}); continuing without it")
            return 0

    def _read(self, path: Path, fingerprint: str, key: str) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The file's tensors and metadata, or None (a bad file is reported once, deleted if owned)."""
        cached = self._memory.get(path)
        if cached is not None:
            self._memory.move_to_end(path)
            return cached
        try:
            data = read_entry(path)
        except FileNotFoundError:
            return None  # never written, or evicted by another process meanwhile
        except OSError as exc:
            self._report(f"prefix-state store: cannot read {path} ({exc.strerror or exc}); recomputing")
            return None
        try:
            tensors, meta = decode_entry(data)
            if json.loads(meta.get("fingerprint", "null")) != fingerprint or json.loads(meta.get("key", "null")) != key:
                raise StoreError("it belongs to another model or prefix")
        except Exception as exc:  # truncated or corrupt: safetensors raises its own types
            self._discard(path, str(exc))
            return None
        with contextlib.suppress(FileNotFoundError):  # evicted by another process since it was read
            os.utime(path)  # LRU by access time
        decoded = {k: json.loads(v) for k, v in meta.items() if k not in ("format", "version", "checksum")}
        self._remember(path, (tensors, decoded))
        return tensors, decoded

    def _discard(self, path: Path, reason: str) -> None:
        """Report a bad entry; delete it only if the manifest says the store wrote it."""
        with self._lock():
            entries = self.root.entries()
            owned = self.root.relative(path) in entries and is_file(path)
            if owned:
                path.unlink(missing_ok=True)
                self.root.record(entries - {self.root.relative(path)})
        self._forget(path)
        action = "deleting it" if owned else "leaving it alone: the store did not write it"
        self._report(f"prefix-state store: ignoring {path} ({reason}); {action}; it will be recomputed")

    def _forget(self, path: Path) -> None:
        dropped = self._memory.pop(path, None)
        if dropped is not None:
            self._memory_used -= sum(t.numel() * t.element_size() for t in dropped[0].values())

    def _remember(self, path: Path, item: tuple[dict[str, torch.Tensor], dict]) -> None:
        size = sum(t.numel() * t.element_size() for t in item[0].values())
        if size > self.memory_bytes:
            return
        self._memory[path] = item
        self._memory_used += size
        while self._memory_used > self.memory_bytes:
            _, (tensors, _) = self._memory.popitem(last=False)
            self._memory_used -= sum(t.numel() * t.element_size() for t in tensors.values())

    # -- prefill
    def prefill(self, engine: Engine, ids: Sequence[int], boundaries: Sequence[int] = (),
                max_tokens: int | None = None) -> tuple[DecodeState, torch.Tensor, PrefillStats]:
        """A state holding `ids` and the logits after them: from the longest stored prefix, then the
        rest computed (snapshotted at each of `boundaries`, every `chunk_tokens`, and at the end). The
        state has room for `max_tokens` (default: the engine's context), so the caller can go on decoding.

        Returns:
            (state, logits `[vocab]` float32 after the last id, PrefillStats with `from_store` set).
        """
        called = time.perf_counter()
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("nothing to prefill")
        stats = PrefillStats(tokens=len(ids), held_tokens=len(ids), from_store=True)
        self.root.prepare()  # a misdirected or read-only store is refused before anything is computed
        self._check_chunking(engine)
        fingerprint = model_fingerprint(engine, self._digests)
        # snapshot at the caller's boundaries, at the end, and every chunk (so a long segment still
        # resumes close to an edit inside it)
        grid_marks = set(range(self.chunk_tokens, len(ids), self.chunk_tokens))
        marks = sorted({p for p in boundaries if 0 < p < len(ids)} | grid_marks | {len(ids)})
        grid = range(self.chunk_tokens, len(ids) + 1, self.chunk_tokens)
        keys = prefix_keys(fingerprint, ids, [*marks, *grid])
        for position in marks:
            self.root.check_entry(self._path(fingerprint, "snapshots", keys[position]))
        for position in grid:
            self.root.check_entry(self._path(fingerprint, self._chunk_kind, keys[position]))
        state = engine.new_state(max(max_tokens, len(ids)) if max_tokens else None)
        if state.max_tokens < len(ids):
            raise ValueError(f"{len(ids)} tokens do not fit a state of {state.max_tokens}")
        started = time.perf_counter()
        logits, reused = None, 0
        for position in reversed(marks):
            loaded = self._load(engine, state, fingerprint, keys, position)
            if loaded is not None:
                logits, reused = loaded, position
                break
            if state.num_tokens:  # a restore that failed half-way: start again from an empty state
                state = engine.new_state(state.max_tokens)
        stats.load_s = time.perf_counter() - started
        if not reused:
            self._saved_on_other_ranks(engine, ids, marks)
        stats.reused_tokens, stats.computed_tokens = reused, len(ids) - reused
        started = time.perf_counter()
        at = reused
        for position in (p for p in marks if p > reused):
            logits = engine.prefill(ids[at:position], state)  # in the engine's chunks (PREFILL_CHUNKS)
            at = position
            stats.store_bytes += self._save(state, logits, fingerprint, keys, position)
            stats.snapshots_written += 1
        stats.prefill_s = time.perf_counter() - started
        stats.seconds = time.perf_counter() - called
        return state, logits, stats

    def _saved_on_other_ranks(self, engine: Engine, ids: list[int], marks: list[int]) -> None:
        """Say so when this prompt was prefilled by a run on another number of ranks (`--parallel`),
        whose states this run does not load (model_fingerprint)."""
        from .parallel import world_of

        ranks = world_of(engine.model)
        for other in (n for n in OTHER_RANKS if n != ranks):
            fingerprint = model_fingerprint(engine, self._digests, ranks=other)
            keys = prefix_keys(fingerprint, ids, marks)
            if any(self._path(fingerprint, "snapshots", keys[p]).exists() for p in marks):
                self._report(f"prefix-state store: this prompt was prefilled on {other} rank{'s' if other > 1 else ''} "
                             f"(--parallel {other}); this run has {ranks}, so it is computed again (a state is "
                             "kept per number of ranks: their sums round differently)")
                return

    def save(self, engine: Engine, state: DecodeState, logits: torch.Tensor, ids: Sequence[int]) -> int:
        """Snapshot `state`, which holds exactly `ids` (logits: after the last), at their end: a later
        `prefill` of a prompt that extends `ids` resumes here. Returns the bytes written."""
        ids = [int(i) for i in ids]
        if not ids or state.num_tokens != len(ids):
            raise ValueError(f"the state holds {state.num_tokens} tokens, not the {len(ids)} given")
        self.root.prepare()
        self._check_chunking(engine)
        fingerprint = model_fingerprint(engine, self._digests)
        grid = range(self.chunk_tokens, len(ids) + 1, self.chunk_tokens)
        keys = prefix_keys(fingerprint, ids, [*grid, len(ids)])
        self.root.check_entry(self._path(fingerprint, "snapshots", keys[len(ids)]))
        return self._save(state, logits, fingerprint, keys, len(ids))

    def _check_chunking(self, engine: Engine) -> None:
        config = engine.model.config
        rates = [config.compress_rate(layer) for layer in range(config.num_hidden_layers)]
        rates = [r for r in rates if r] or [1]
        step = math.lcm(*rates)
        if self.chunk_tokens % step:
            self.chunk_tokens = max(1, round(self.chunk_tokens / step)) * step

    def _load(self, engine: Engine, state: DecodeState, fingerprint: str, keys: dict[int, str],
              position: int) -> torch.Tensor | None:
        snapshot = self._read(self._path(fingerprint, "snapshots", keys[position]), fingerprint, keys[position])
        if snapshot is None:
            return None
        tensors, meta = snapshot
        counters = meta.get("counters", {})
        if counters.get("num_tokens") != position or counters.get("whole_chunks") != position // self.chunk_tokens:
            return None
        chunks = []
        for index in range(position // self.chunk_tokens):
            key = keys[(index + 1) * self.chunk_tokens]
            chunk = self._read(self._path(fingerprint, self._chunk_kind, key), fingerprint, key)
            if chunk is None:
                return None  # a chunk was evicted: the snapshot cannot be rebuilt
            chunks.append(chunk[0])
        try:
            return restore(state, tensors, counters, chunks, self.chunk_tokens)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            self._report(f"prefix-state store: snapshot {keys[position][:12]} does not fit this model ({exc}); recomputing")
            return None

    def _save(self, state: DecodeState, logits: torch.Tensor, fingerprint: str, keys: dict[int, str],
              position: int) -> int:
        """Write the chunks not yet stored and the snapshot at `position`. Each entry is listed in the
        manifest before its file is written: a crash leaves a listed entry without a file (forgotten at
        the next eviction), never a file the store cannot prove it wrote."""
        with self._lock():
            entries = self.root.entries()
            planned: list[tuple[Path, Callable[[], tuple[dict[str, torch.Tensor], dict]]]] = []
            for index in range(position // self.chunk_tokens):
                key = keys[(index + 1) * self.chunk_tokens]
                path = self._path(fingerprint, self._chunk_kind, key)
                if not path.exists():
                    planned.append((path, lambda index=index, key=key: (
                        chunk_tensors(state, index, self.chunk_tokens), {"fingerprint": fingerprint, "key": key})))
            path = self._path(fingerprint, "snapshots", keys[position])
            if not path.exists() or self.root.relative(path) in entries:  # never overwrite what it did not write
                planned.append((path, lambda: self._snapshot(state, logits, fingerprint, keys[position])))
            new = {self.root.relative(p) for p, _ in planned} - entries
            if new:
                entries |= new
                self.root.record(entries)
            written = 0
            for path, build in planned:
                tensors, meta = build()
                written += self._write(path, tensors, meta)
            self._evict(entries)
        return written

    def _snapshot(self, state: DecodeState, logits: torch.Tensor, fingerprint: str, key: str
                  ) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, counters = snapshot_tensors(state, logits, self.chunk_tokens)
        return tensors, {"fingerprint": fingerprint, "key": key, "counters": counters}

    # -- maintenance
    def files(self) -> list[Path]:
        """The entries the store wrote that are still there (nothing else in the directory counts)."""
        paths = [self.directory / rel for rel in sorted(self.root.entries())]
        return [path for path in paths if is_file(path)]

    def _evict(self, entries: set[str]) -> set[str]:
        """Drop the least recently used entries until the store fits `max_bytes` (caller holds the lock);
        the manifest forgets entries that are gone. Returns the entries left."""
        listed = []
        for rel in entries:
            try:
                info = os.lstat(self.directory / rel)
            except FileNotFoundError:
                continue
            if is_file(self.directory / rel):
                listed.append((max(info.st_atime, info.st_mtime), info.st_size, rel))
        total = sum(size for _, size, _ in listed)
        kept = {rel for _, _, rel in listed}
        for _, size, rel in sorted(listed):
            if total <= self.max_bytes:
                break
            (self.directory / rel).unlink(missing_ok=True)
            self._forget(self.directory / rel)
            kept.discard(rel)
            total -= size
        if kept != entries:
            self.root.record(kept)
        return kept

    def stats(self) -> dict:
        files = self.files()
        sizes = [p.stat().st_size for p in files if p.exists()]
        return {"directory": str(self.directory), "files": len(files),
                "snapshots": sum(1 for p in files if p.parent.name == "snapshots"),
                "chunks": sum(1 for p in files if p.parent.name.startswith("chunks")),
                "bytes": sum(sizes), "max_bytes": self.max_bytes,
                "models": len({p.parent.parent.name for p in files})}

    def clear(self) -> int:
        """Delete every entry the store wrote (and the folders they leave empty); returns how many."""
        if not self.directory.exists():
            return 0
        self.root.prepare()
        with self._lock():
            files = self.files()
            for path in files:
                path.unlink(missing_ok=True)
            for folder in sorted({p.parent for p in files} | {p.parent.parent for p in files}, reverse=True):
                with contextlib.suppress(OSError):  # not empty: something else lives there, leave it
                    folder.rmdir()
            self.root.record(set())
            self._memory.clear()
            self._memory_used = 0
        return len(files)

    def verify(self) -> Verified:
        """Check every entry the store wrote (header, counters, tensors: every byte); bad ones are deleted
        and listed. Files the store did not write are never read, listed or deleted."""
        if not self.directory.exists():
            return Verified()
        self.root.prepare()
        bad = []
        checked = size = 0
        with self._lock():
            entries = self.root.entries()
            for rel in sorted(entries):
                path = self.directory / rel
                if is_file(temp_path(path)):  # a write killed before its rename
                    temp_path(path).unlink()
                if not (path.exists() or path.is_symlink()):
                    entries.discard(rel)
                    continue
                if not is_file(path):
                    bad.append(f"{path}: not a regular file; left alone, no longer counted as an entry")
                    entries.discard(rel)
                    continue
                checked += 1
                size += path.stat().st_size
                try:
                    _, meta = decode_entry(read_entry(path))
                    if json.loads(meta.get("key", "null")) != path.stem or \
                            not json.loads(meta.get("fingerprint", "null")).startswith(path.parent.parent.name):
                        raise StoreError("it belongs to another model or prefix")
                except Exception as exc:
                    bad.append(f"{path}: {exc}")
                    path.unlink(missing_ok=True)
                    self._forget(path)
                    entries.discard(rel)
            self.root.record(entries)
        return Verified(checked, size, bad)
