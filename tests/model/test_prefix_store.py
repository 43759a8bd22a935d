"""The prefix-state store against cold prefills of a tiny random checkpoint: warm (memory and disk) equals
cold, reuse after edits, every kind of bad file recomputed and never loaded, a full disk, two processes
sharing a store, eviction under max_bytes, the prefix keys, clear and stats."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from v4 import model
from v4.model import prefix_store, prefix_store_files
from v4.model.random_checkpoint import init_checkpoint
from v4.model.prefix_store import FORMAT_VERSION, PrefixStore, model_fingerprint, prefix_keys

CHUNK = 128  # a multiple of the tiny preset's compress rates (4 and 8)
LENGTH = 600  # four whole chunks and a tail
BOUNDARIES = [100, 250, 400, 550]
TOLERANCE = 1e-5  # fp32 rounding of a prefill in other pieces


# ------------------------------------------------------------------------------------------ fixtures

class Tiny:
    """A tiny random checkpoint, its engine, and cold prefills (memoised: each costs a forward)."""

    def __init__(self, checkpoint: Path) -> None:
        self.checkpoint = checkpoint
        self.engine = model.load(checkpoint, device="cpu", dtype="float32")
        self.fingerprint = model_fingerprint(self.engine)
        self.vocab = self.engine.model.config.vocab_size
        self._cold: dict[tuple[int, ...], torch.Tensor] = {}

    def ids(self, seed: int, length: int = LENGTH) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, self.vocab, (length,), generator=generator).tolist()

    def cold(self, ids: list[int]) -> torch.Tensor:
        """The last logits of one forward over `ids` from an empty state."""
        key = tuple(ids)
        if key not in self._cold:
            self._cold[key] = self.engine.forward(ids, self.engine.new_state())[-1]
        return self._cold[key]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    # One thread: the tiny model gains nothing from more, and with another busy process on the same
    # cores OpenMP's spinning threads make each forward ~40x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("prefix_store") / "tiny"
    init_checkpoint(directory, "tiny", seed=1)
    yield Tiny(directory)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def other(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """Another model: the same preset with other random weights (after `tiny`, which sets the threads)."""
    directory = tmp_path_factory.mktemp("prefix_store_other") / "tiny"
    init_checkpoint(directory, "tiny", seed=2)
    return Tiny(directory)


@pytest.fixture(scope="module")
def populated(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store directory holding one prefill of `tiny.ids(0)` at BOUNDARIES (tests copy it)."""
    directory = tmp_path_factory.mktemp("populated") / "store"
    store = PrefixStore(directory, chunk_tokens=CHUNK, warn=_fail_on_warning)
    store.prefill(tiny.engine, tiny.ids(0), BOUNDARIES)
    return directory


def _fail_on_warning(message: str) -> None:
    raise AssertionError(f"unexpected warning: {message}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _copy(populated: Path, tmp_path: Path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(populated, target)
    return target


def _file(directory: Path, fingerprint: str, kind: str, ids: list[int], position: int) -> Path:
    """The file of the snapshot (or chunk) of ids[:position] for model `fingerprint`."""
    key = prefix_keys(fingerprint, ids, [position])[position]
    folder = f"chunks-{CHUNK}" if kind == "chunks" else kind  # chunks are kept apart by width
    return directory / fingerprint[:32] / folder / f"{key}.safetensors"


def _inodes(directory: Path) -> dict[Path, int]:
    return {p: p.stat().st_ino for p in directory.glob("*/*/*.safetensors")}


def _temporaries(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.startswith(".tmp")]


def _rewrite(path: Path, **metadata: str) -> None:
    """Rewrite a store file with the same tensors (so its checksum still holds) and other metadata."""
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    save_file(tensors, str(path), metadata={**meta, **metadata})


def _data_offset(path: Path) -> int:
    """Where a safetensors file's tensor bytes start (after the 8-byte length and the JSON header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


# -------------------------------------------------------------------------------- 1. warm == cold

def test_warm_prefill_from_memory_and_disk_equals_cold(tiny: Tiny, tmp_path: Path) -> None:
    engine, ids, extra = tiny.engine, tiny.ids(0), tiny.ids(1, 40)
    cold_state = engine.new_state()
    cold = engine.forward(ids, cold_state)[-1]
    cold_draft = engine.draft(cold_state, extra[0])
    cold_next = engine.forward(extra, cold_state)

    warnings: list[str] = []
    store = PrefixStore(tmp_path / "store", chunk_tokens=CHUNK, warn=warnings.append)
    state, first, stats = store.prefill(engine, ids, [200])
    assert _rel(first, cold) < TOLERANCE
    assert (stats.tokens, stats.reused_tokens, stats.computed_tokens) == (LENGTH, 0, LENGTH)
    assert stats.snapshots_written == 6  # 200, every chunk (128, 256, 384, 512) and the end
    assert stats.store_bytes == store.stats()["bytes"] > 0

    def check_warm(result: tuple) -> None:
        warm_state, warm, warm_stats = result
        assert torch.equal(warm, first)
        assert _rel(warm, cold) < TOLERANCE
        assert (warm_stats.reused_tokens, warm_stats.computed_tokens, warm_stats.snapshots_written) == (LENGTH, 0, 0)
        assert warm_state.num_tokens == LENGTH
        assert _rel(engine.draft(warm_state, extra[0]), cold_draft) < TOLERANCE  # the MTP stream came back too
        assert _rel(engine.forward(extra, warm_state), cold_next) < TOLERANCE

    check_warm(store.prefill(engine, ids))  # same object: read from disk into memory
    check_warm(PrefixStore(tmp_path / "store", chunk_tokens=CHUNK).prefill(engine, ids))  # a new object: disk
    shutil.rmtree(tmp_path / "store" / tiny.fingerprint[:32])
    check_warm(store.prefill(engine, ids))  # the disk is gone: only the memory tier can answer
    assert warnings == []

    # the computed state continues like the cold one as well
    assert _rel(engine.forward(extra, state), cold_next) < TOLERANCE


def test_a_snapshot_restores_into_a_state_of_another_capacity(tiny: Tiny, tmp_path: Path) -> None:
    """Snapshots hold the ring, partial windows and entries made, none sized by the state's capacity: a
    state saved with room for 64 more tokens restores into one of 4x the prompt (another session's)."""
    engine, ids, extra = tiny.engine, tiny.ids(0), tiny.ids(1, 40)
    cold_state = engine.new_state()
    engine.forward(ids, cold_state)
    cold_next = engine.forward(extra, cold_state)
    PrefixStore(tmp_path / "store", chunk_tokens=CHUNK).prefill(engine, ids, max_tokens=len(ids) + 64)
    state, _, stats = PrefixStore(tmp_path / "store", chunk_tokens=CHUNK).prefill(engine, ids, max_tokens=4 * len(ids))
    assert stats.reused_tokens == len(ids) and state.max_tokens == 4 * len(ids)
    assert _rel(engine.forward(extra, state), cold_next) < TOLERANCE


# ------------------------------------------------------------------------------- 2. edits

@pytest.mark.parametrize(("edit", "reused"), [(420, 400), (256, 256), (255, 250)])
def test_reuse_after_an_edit(tiny: Tiny, populated: Path, tmp_path: Path, edit: int, reused: int) -> None:
    """An edit at `edit` resumes from the last snapshot (boundary or chunk) at or before it."""
    directory = _copy(populated, tmp_path)
    before = _inodes(directory)
    ids = tiny.ids(0)
    edited = list(ids)
    edited[edit] = (edited[edit] + 1) % tiny.vocab

    store = PrefixStore(directory, chunk_tokens=CHUNK, warn=_fail_on_warning)
    _, logits, stats = store.prefill(tiny.engine, edited, BOUNDARIES)
    assert (stats.reused_tokens, stats.computed_tokens) == (reused, LENGTH - reused)
    assert _rel(logits, tiny.cold(edited)) < TOLERANCE

    after = _inodes(directory)
    rewritten = [p for p, inode in before.items() if after.get(p) != inode]
    assert rewritten == []  # nothing of the old prompt is rewritten (or lost)
    marks = sorted(set(BOUNDARIES) | set(range(CHUNK, LENGTH, CHUNK)) | {LENGTH})
    new_snapshots = [p for p in marks if p > edit]  # every prefix that contains the edit
    new_chunks = [p for p in range(CHUNK, LENGTH + 1, CHUNK) if p > edit]
    assert stats.snapshots_written == len([p for p in marks if p > reused])
    counts = PrefixStore(directory).stats()
    assert counts["snapshots"] == len(marks) + len(new_snapshots)
    assert counts["chunks"] == LENGTH // CHUNK + len(new_chunks)
    for position in range(CHUNK, edit + 1, CHUNK):  # the unchanged prefix's chunks are shared, kept as they were
        path = _file(directory, tiny.fingerprint, "chunks", edited, position)
        assert before[path] == after[path]


# --------------------------------------------------------------------------- 3. bad files

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    offset = (_data_offset(path) + len(data)) // 2
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _other_fingerprint(path: Path) -> None:
    _rewrite(path, fingerprint=json.dumps("0" * 32))


def _old_version(path: Path) -> None:
    _rewrite(path, version="0")


def _future_version(path: Path) -> None:
    _rewrite(path, version=str(FORMAT_VERSION + 1))


def _other_key(path: Path) -> None:
    _rewrite(path, key=json.dumps("0" * 32))


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a safetensors file")


CORRUPTIONS = {"truncated": _truncate, "flipped byte": _flip, "other fingerprint": _other_fingerprint,
               "old version": _old_version, "future version": _future_version, "other key": _other_key,
               "garbage": _garbage}


@pytest.mark.parametrize(("corruption", "kind"), [(corruption, "snapshots") for corruption in CORRUPTIONS] +
                         [(corruption, "chunks") for corruption in ("truncated", "flipped byte", "other key")])
def test_bad_file_is_reported_deleted_and_recomputed(tiny: Tiny, populated: Path, tmp_path: Path,
                                                     corruption: str, kind: str) -> None:
    directory = _copy(populated, tmp_path)
    ids = tiny.ids(0)
    # the end's snapshot, or the last chunk (which every snapshot from 512 on needs)
    position, resumes = (LENGTH, 550) if kind == "snapshots" else (512, 400)
    bad = _file(directory, tiny.fingerprint, kind, ids, position)
    CORRUPTIONS[corruption](bad)
    corrupted = bad.read_bytes()

    warnings: list[str] = []
    store = PrefixStore(directory, chunk_tokens=CHUNK, warn=warnings.append)
    _, logits, stats = store.prefill(tiny.engine, ids, BOUNDARIES)
    assert stats.reused_tokens == resumes  # never loaded: the snapshot before it was
    assert _rel(logits, tiny.cold(ids)) < TOLERANCE
    assert len(warnings) == 1 and bad.name in warnings[0]
    assert not bad.exists() or bad.read_bytes() != corrupted  # deleted (then written anew)
    assert store.verify().bad == []

    _, again, stats = PrefixStore(directory, chunk_tokens=CHUNK, warn=_fail_on_warning).prefill(tiny.engine, ids)
    assert stats.reused_tokens == LENGTH and torch.equal(again, logits)


@pytest.mark.parametrize("corruption", ["truncated", "flipped byte", "old version", "garbage"])
def test_verify_deletes_bad_files(tiny: Tiny, populated: Path, tmp_path: Path, corruption: str) -> None:
    directory = _copy(populated, tmp_path)
    bad = _file(directory, tiny.fingerprint, "snapshots", tiny.ids(0), 400)
    CORRUPTIONS[corruption](bad)
    store = PrefixStore(directory, chunk_tokens=CHUNK)
    files = len(store.files())
    found = store.verify().bad
    assert len(found) == 1 and str(bad) in found[0]
    assert not bad.exists() and len(store.files()) == files - 1
    assert store.verify().bad == []


def test_missing_chunk_resumes_from_a_shorter_prefix(tiny: Tiny, populated: Path, tmp_path: Path) -> None:
    directory = _copy(populated, tmp_path)
    ids = tiny.ids(0)
    _file(directory, tiny.fingerprint, "chunks", ids, 384).unlink()  # as if evicted
    store = PrefixStore(directory, chunk_tokens=CHUNK, warn=_fail_on_warning)  # eviction is no error
    _, logits, stats = store.prefill(tiny.engine, ids, BOUNDARIES)
    assert stats.reused_tokens == 256  # 384 and later need the chunk ending at 384
    assert _rel(logits, tiny.cold(ids)) < TOLERANCE
    assert _file(directory, tiny.fingerprint, "chunks", ids, 384).exists()  # written again


def test_another_models_files_are_never_used(tiny: Tiny, other: Tiny, populated: Path, tmp_path: Path) -> None:
    directory = _copy(populated, tmp_path)
    ids = tiny.ids(0)
    assert other.fingerprint != tiny.fingerprint

    # the other model does not find the first model's states under its keys
    store = PrefixStore(directory, chunk_tokens=CHUNK, warn=_fail_on_warning)
    _, logits, stats = store.prefill(other.engine, ids)
    assert stats.reused_tokens == 0 and _rel(logits, other.cold(ids)) < TOLERANCE
    assert store.stats()["models"] == 2

    # a file of the first model put where the other model looks for its own is refused
    theirs = _file(directory, other.fingerprint, "snapshots", ids, LENGTH)
    shutil.copyfile(_file(directory, tiny.fingerprint, "snapshots", ids, LENGTH), theirs)
    warnings: list[str] = []
    store = PrefixStore(directory, chunk_tokens=CHUNK, warn=warnings.append)
    _, logits, stats = store.prefill(other.engine, ids, [512])
    assert stats.reused_tokens == 512  # its own snapshot, not the planted one
    assert _rel(logits, other.cold(ids)) < TOLERANCE
    assert len(warnings) == 1 and "another model" in warnings[0]

    # and the first model still finds its own
    _, logits, stats = PrefixStore(directory, chunk_tokens=CHUNK, warn=_fail_on_warning).prefill(tiny.engine, ids)
    assert stats.reused_tokens == LENGTH and _rel(logits, tiny.cold(ids)) < TOLERANCE


def test_other_chunk_size_in_the_same_directory(tiny: Tiny, populated: Path, tmp_path: Path) -> None:
    """Chunk files are keyed by the prefix at their end, so a store with another chunk size finds chunks of
    the wrong width under its keys: the restore fails, and must not leave a half-filled state behind."""
    directory = _copy(populated, tmp_path)
    ids = tiny.ids(0)
    for _ in range(2):  # the first writes snapshots of 256-token chunks; the second finds them
        store = PrefixStore(directory, chunk_tokens=2 * CHUNK)
        state, logits, stats = store.prefill(tiny.engine, ids)
        assert _rel(logits, tiny.cold(ids)) < TOLERANCE
        assert state.num_tokens == LENGTH


def test_file_evicted_while_being_read(tiny: Tiny, populated: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process may evict a file right after this one read it (between the read and the touch)."""
    directory = _copy(populated, tmp_path)
    ids = tiny.ids(0)
    real = prefix_store.read_entry

    def read_then_evicted(path: Path) -> bytes:
        data = real(path)
        path.unlink(missing_ok=True)
        return data

    monkeypatch.setattr(prefix_store, "read_entry", read_then_evicted)
    _, logits, stats = PrefixStore(directory, chunk_tokens=CHUNK, warn=_fail_on_warning).prefill(tiny.engine, ids)
    assert _rel(logits, tiny.cold(ids)) < TOLERANCE


# ---------------------------------------------------------------------------------- 4. full disk

@pytest.mark.parametrize("error", [OSError(28, "No space left on device"),
                                   # what safetensors itself raises when the disk refuses a write
                                   SafetensorError("Error while serializing: I/O error: No space left on "
                                                   "device (os error 28)")], ids=["OSError", "SafetensorError"])
def test_full_disk(tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    ids = tiny.ids(0)

    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[:100])  # a partial write, then the disk is full
        raise error

    if isinstance(error, SafetensorError):  # raised by safetensors itself, while it serializes
        monkeypatch.setattr(prefix_store_files, "save", lambda *args, **options: (_ for _ in ()).throw(error))
    else:
        monkeypatch.setattr(prefix_store_files, "_write_all", full)
    warnings: list[str] = []
    store = PrefixStore(tmp_path / "store", chunk_tokens=CHUNK, warn=warnings.append)
    _, logits, stats = store.prefill(tiny.engine, ids, BOUNDARIES)
    assert _rel(logits, tiny.cold(ids)) < TOLERANCE
    assert stats.store_bytes == 0
    assert warnings and all("No space left" in w for w in warnings)
    assert _temporaries(tmp_path / "store") == []
    reported = list(warnings)
    _, logits, _ = store.prefill(tiny.engine, ids, BOUNDARIES)  # still full: correct, and no new reports
    assert _rel(logits, tiny.cold(ids)) < TOLERANCE and warnings == reported
    assert store.verify().bad == [] and store.stats()["files"] == 0

    if isinstance(error, SafetensorError):
        return  # the rest does not depend on the error's type
    monkeypatch.undo()  # the disk has room again
    _, logits, stats = store.prefill(tiny.engine, ids, BOUNDARIES)
    assert stats.reused_tokens == 0 and stats.store_bytes > 0 and _rel(logits, tiny.cold(ids)) < TOLERANCE
    _, warm, stats = PrefixStore(tmp_path / "store", chunk_tokens=CHUNK).prefill(tiny.engine, ids)
    assert stats.reused_tokens == LENGTH and torch.equal(warm, logits)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_real_write_failure(tiny: Tiny, tmp_path: Path) -> None:
    """A file size limit makes the kernel refuse the writes (EFBIG) inside safetensors itself."""
    import resource

    ids = tiny.ids(0)
    warnings: list[str] = []
    store = PrefixStore(tmp_path / "store", chunk_tokens=CHUNK, warn=warnings.append)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, limits[1]))  # chunks (~15 KB) fit, snapshots do not
    try:
        _, logits, stats = store.prefill(tiny.engine, ids)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert _rel(logits, tiny.cold(ids)) < TOLERANCE
    assert warnings and store.stats()["snapshots"] == 0
    assert _temporaries(tmp_path / "store") == []
    assert store.verify().bad == []


# ---------------------------------------------------------------------------------- 5. two processes

def _prefill_in_another_process(checkpoint: str, directory: str, prompts: list[list[int]], barrier: object,
                                out: str) -> None:
    torch.set_num_threads(1)
    engine = model.load(checkpoint, device="cpu", dtype="float32")
    warnings: list[str] = []
    barrier.wait(timeout=120)  # both start prefilling together
    results = []
    for ids in prompts:  # a new object each time: the other process's files are read from disk
        _, logits, stats = PrefixStore(directory, chunk_tokens=CHUNK, warn=warnings.append).prefill(
            engine, ids, BOUNDARIES)
        results.append((logits, stats.to_json()))
    torch.save({"results": results, "warnings": warnings}, out)


def test_two_processes_share_a_store(tiny: Tiny, tmp_path: Path) -> None:
    ids, directory = tiny.ids(0), tmp_path / "store"
    edits = []
    for position in (420, 300):  # each process also edits the prompt in its own place
        edited = list(ids)
        edited[position] = (edited[position] + 1) % tiny.vocab
        edits.append(edited)
    prompts = [[ids, edited, ids] for edited in edits]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    outs = [tmp_path / f"out{i}.pt" for i in range(2)]
    processes = [context.Process(target=_prefill_in_another_process,
                                 args=(str(tiny.checkpoint), str(directory), own, barrier, str(out)))
                 for own, out in zip(prompts, outs)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=180)
    assert [p.exitcode for p in processes] == [0, 0]
    for own, out in zip(prompts, outs):
        result = torch.load(out)
        assert result["warnings"] == []
        for prompt, (logits, stats) in zip(own, result["results"]):
            assert _rel(logits, tiny.cold(prompt)) < TOLERANCE
            assert stats["reused_tokens"] + stats["computed_tokens"] == LENGTH
        assert result["results"][-1][1]["reused_tokens"] == LENGTH  # its own first prefill is still there

    store = PrefixStore(directory, chunk_tokens=CHUNK, warn=_fail_on_warning)
    assert store.verify().bad == []
    assert _temporaries(directory) == []
    for prompt in [ids, *edits]:
        _, logits, stats = store.prefill(tiny.engine, prompt, BOUNDARIES)
        assert stats.reused_tokens == LENGTH and _rel(logits, tiny.cold(prompt)) < TOLERANCE


# ---------------------------------------------------------------------------------- 6. eviction

def test_eviction_keeps_the_store_under_max_bytes(tiny: Tiny, tmp_path: Path) -> None:
    first, second = tiny.ids(0), tiny.ids(2)
    probe = PrefixStore(tmp_path / "probe", chunk_tokens=CHUNK)
    probe.prefill(tiny.engine, first)
    one = probe.stats()["bytes"]

    store = PrefixStore(tmp_path / "store", chunk_tokens=CHUNK, max_bytes=int(one * 1.25), warn=_fail_on_warning)
    for ids in (first, second):
        _, logits, stats = store.prefill(tiny.engine, ids)
        assert stats.reused_tokens == 0 and _rel(logits, tiny.cold(ids)) < TOLERANCE
        assert 0 < store.stats()["bytes"] <= store.max_bytes
    _, logits, stats = store.prefill(tiny.engine, second)  # the most recent fits
    assert stats.reused_tokens == LENGTH and _rel(logits, tiny.cold(second)) < TOLERANCE
    # the first was evicted (least recently used): recomputed, correctly
    _, logits, stats = PrefixStore(tmp_path / "store", chunk_tokens=CHUNK, max_bytes=int(one * 1.25)).prefill(
        tiny.engine, first)
    assert stats.reused_tokens < LENGTH and _rel(logits, tiny.cold(first)) < TOLERANCE
    assert store.stats()["bytes"] <= store.max_bytes


def test_eviction_is_least_recently_used(tiny: Tiny, tmp_path: Path) -> None:
    """Reading a prompt's files makes them recent (every read, not only the first after a write, which
    relatime covers): a newer prompt evicts the less recently used files first."""
    first, second, third = tiny.ids(0), tiny.ids(2), tiny.ids(3)
    directory = tmp_path / "store"
    store = PrefixStore(directory, chunk_tokens=CHUNK, warn=_fail_on_warning)

    def read(ids: list[int]) -> None:  # a new object each time: from disk, not from memory
        assert PrefixStore(directory, chunk_tokens=CHUNK).prefill(tiny.engine, ids)[2].reused_tokens == LENGTH

    store.prefill(tiny.engine, first)
    one = store.stats()["bytes"]
    read(first)
    store.prefill(tiny.engine, second)
    read(first)  # the first is now more recent than the second
    store.max_bytes = int(one * 2.1)
    store.prefill(tiny.engine, third)  # evicts about a prompt: the first's unread snapshots, then the second
    assert store.stats()["bytes"] <= store.max_bytes
    fresh = PrefixStore(directory, chunk_tokens=CHUNK, max_bytes=10**12, warn=_fail_on_warning)
    _, logits, stats = fresh.prefill(tiny.engine, first)
    assert stats.reused_tokens == LENGTH and _rel(logits, tiny.cold(first)) < TOLERANCE
    _, logits, stats = fresh.prefill(tiny.engine, second)
    assert stats.reused_tokens < LENGTH and _rel(logits, tiny.cold(second)) < TOLERANCE


def test_memory_tier_after_disk_eviction(tiny: Tiny, tmp_path: Path) -> None:
    """Files evicted from disk leave the memory tier with their bytes: it can hold as much as before."""
    first, second = tiny.ids(0), tiny.ids(2)
    directory = tmp_path / "store"
    store = PrefixStore(directory, chunk_tokens=CHUNK)
    store.prefill(tiny.engine, first)
    # a warm prefill reads the end's snapshot and every chunk
    needed = [_file(directory, tiny.fingerprint, "snapshots", first, LENGTH)] + \
             [_file(directory, tiny.fingerprint, "chunks", first, p) for p in range(CHUNK, LENGTH + 1, CHUNK)]
    store.memory_bytes = int(1.5 * sum(p.stat().st_size for p in needed))  # one prompt's, not two
    store.prefill(tiny.engine, first)  # into memory
    store.max_bytes = 0
    store.prefill(tiny.engine, second)  # every file evicted from disk (and memory) as it is written
    store.max_bytes = 10**12
    store.prefill(tiny.engine, second)
    store.prefill(tiny.engine, second)  # into memory
    shutil.rmtree(directory / tiny.fingerprint[:32])  # only the memory tier can answer now
    _, logits, stats = store.prefill(tiny.engine, second)
    assert stats.reused_tokens == LENGTH and _rel(logits, tiny.cold(second)) < TOLERANCE


# ---------------------------------------------------------------------------------- 7. keys

def test_prefix_keys(tiny: Tiny, other: Tiny) -> None:
    ids, extra = tiny.ids(0), tiny.ids(1, 100)
    positions = [0, 1, 63, 64, 65, 127, 128, 300, LENGTH]
    keys = prefix_keys(tiny.fingerprint, ids, positions)
    assert list(keys) == positions and len(set(keys.values())) == len(positions)
    assert prefix_keys(tiny.fingerprint, ids + extra, positions) == keys  # a function of the prefix alone
    assert prefix_keys(tiny.fingerprint, ids[:300], [300])[300] == keys[300]
    assert {p: prefix_keys(tiny.fingerprint, ids, [p])[p] for p in positions} == keys  # asked one at a time

    edited = list(ids)
    edited[64] = (edited[64] + 1) % tiny.vocab
    changed = prefix_keys(tiny.fingerprint, edited, positions)
    assert [p for p in positions if changed[p] != keys[p]] == [p for p in positions if p > 64]

    theirs = prefix_keys(other.fingerprint, ids, positions)
    assert not set(theirs.values()) & set(keys.values())
    assert model_fingerprint(tiny.engine) == tiny.fingerprint != other.fingerprint

    # Known values: a change to the hashing (or to the fingerprint's role in it) changes every key on disk,
    # so it must come with a FORMAT_VERSION bump; then update these.
    assert prefix_keys("0" * 32, list(range(1000, 1200)), [0, 1, 64, 130, 200]) == {
        0: "28a07add8a4446866c873616ff3e8340",
        1: "6ded860f5f855835a1962c8775b28210",
        64: "05b1af8e8350644a08abc17fb89e5bb7",
        130: "0c9cd73c0d95bf4a5cb3e110b395c4a3",
        200: "754256468e34d0443a0d48af552acd15",
    }
    assert FORMAT_VERSION == 3


# ---------------------------------------------------------------------------------- 8. stats, clear

def test_stats_and_clear(tiny: Tiny, populated: Path, tmp_path: Path) -> None:
    directory = _copy(populated, tmp_path)
    store = PrefixStore(directory, chunk_tokens=CHUNK, warn=_fail_on_warning)
    marks = set(BOUNDARIES) | set(range(CHUNK, LENGTH, CHUNK)) | {LENGTH}
    stats = store.stats()
    files = list(directory.glob("*/*/*.safetensors"))
    assert stats["snapshots"] == len(marks) and stats["chunks"] == LENGTH // CHUNK
    assert stats["files"] == len(files) == len(marks) + LENGTH // CHUNK
    assert stats["bytes"] == sum(p.stat().st_size for p in files) and stats["models"] == 1

    ids = tiny.ids(0)
    _, _, warm = store.prefill(tiny.engine, ids)  # now in memory too
    assert warm.reused_tokens == LENGTH
    assert store.clear() == len(files)
    assert list(directory.glob("*/*/*.safetensors")) == []
    assert store.stats() == {**stats, "files": 0, "snapshots": 0, "chunks": 0, "bytes": 0, "models": 0}
    _, logits, cold = store.prefill(tiny.engine, ids)  # neither disk nor memory still holds it
    assert cold.reused_tokens == 0 and _rel(logits, tiny.cold(ids)) < TOLERANCE
    assert PrefixStore(tmp_path / "absent").stats()["files"] == 0
    assert PrefixStore(tmp_path / "absent").clear() == 0
