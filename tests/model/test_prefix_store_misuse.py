"""The prefix-state store against misuse (issue 22): it deletes only what it wrote, refuses a foreign, misdirected
or read-only directory before any work, and its checksum catches a flipped bit anywhere in an entry."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from v4 import model
from v4.model.random_checkpoint import init_checkpoint
from v4.model.prefix_store_files import MANIFEST
from v4.model.prefix_store import PrefixStore, StoreDirectoryError, model_fingerprint, prefix_keys

CHUNK = 128
LENGTH = 300  # two whole chunks and a tail


class Tiny:
    """A tiny random checkpoint, its engine and the cold logits of one prompt."""

    def __init__(self, checkpoint: Path) -> None:
        self.engine = model.load(checkpoint, device="cpu", dtype="float32")
        self.fingerprint = model_fingerprint(self.engine)
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, self.engine.model.config.vocab_size, (LENGTH,), generator=generator).tolist()
        self.cold = self.engine.forward(self.ids, self.engine.new_state())[-1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from more (see test_prefix_store.py)
    directory = tmp_path_factory.mktemp("engram_misuse") / "tiny"
    init_checkpoint(directory, "tiny", seed=1)
    yield Tiny(directory)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def populated(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("misuse_populated") / "store"
    PrefixStore(directory, chunk_tokens=CHUNK).prefill(tiny.engine, tiny.ids, [200])
    return directory


@pytest.fixture()
def store_dir(populated: Path, tmp_path: Path) -> Path:
    target = tmp_path / "store"
    shutil.copytree(populated, target)
    return target


@pytest.fixture()
def no_forward(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any forward of the engine fails the test: a refusal must come before the prefill is computed."""
    def forward(*args: object, **options: object) -> torch.Tensor:
        raise AssertionError("the prefill was computed before the store was refused")

    monkeypatch.setattr(tiny.engine, "forward", forward)


def _snapshot(directory: Path, tiny: Tiny, position: int = LENGTH) -> Path:
    key = prefix_keys(tiny.fingerprint, tiny.ids, [position])[position]
    return directory / tiny.fingerprint[:32] / "snapshots" / f"{key}.safetensors"


def _model_folder(where: Path) -> dict[Path, bytes]:
    """A model's files (what `verify` once deleted); returns their bytes to compare with later."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "model.safetensors").write_bytes(b"weights" * 100)
    (where / "config.json").write_text("{}")
    return {p: p.read_bytes() for p in where.iterdir()}


def _tree(directory: Path) -> dict[str, bytes | None]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(directory.rglob("*"))}


# ------------------------------------------------------------------------ only what it wrote

def test_verify_clear_and_eviction_never_delete_a_model_under_or_beside_the_store(
        tiny: Tiny, store_dir: Path) -> None:
    models = {**_model_folder(store_dir / "models" / "tiny"),  # matches the */*/*.safetensors of format 1
              **_model_folder(store_dir / tiny.fingerprint[:32] / "snapshots" / "mine"),
              **_model_folder(store_dir.parent / "beside")}
    planted = store_dir / tiny.fingerprint[:32] / "snapshots" / ("0" * 32 + ".safetensors")
    planted.write_bytes(b"not written by the store")  # an entry's name, but not in the manifest
    models[planted] = planted.read_bytes()
    store = PrefixStore(store_dir, chunk_tokens=CHUNK)
    assert store.verify().bad == []
    store.max_bytes = 0
    store.prefill(tiny.engine, tiny.ids[:-1])  # eviction of everything it owns
    assert store.stats()["files"] == 0
    assert store.clear() == 0
    assert {p: p.read_bytes() for p in models} == models


def test_a_foreign_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    _model_folder(tmp_path / "model")
    before = _tree(tmp_path / "model")
    with pytest.raises(StoreDirectoryError, match="not a prefix-state store.*model.safetensors"):
        PrefixStore(tmp_path / "model")
    assert _tree(tmp_path / "model") == before


def test_a_store_of_the_older_format_is_refused_by_name(tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / ("a" * 32) / "snapshots").mkdir(parents=True)
    (old / ("a" * 32) / "snapshots" / ("b" * 32 + ".safetensors")).write_bytes(b"format 1")
    (old / ".lock").touch()
    before = _tree(old)
    with pytest.raises(StoreDirectoryError, match="older format"):
        PrefixStore(old)
    assert _tree(old) == before


def test_a_corrupt_manifest_is_refused(store_dir: Path) -> None:
    (store_dir / MANIFEST).write_text('{"format": "v4-engram-store", "version": 3, "entries": ["../model.safetensors"]}')
    with pytest.raises(StoreDirectoryError, match="not an entry path"):
        PrefixStore(store_dir)
    (store_dir / MANIFEST).write_text("{")
    with pytest.raises(StoreDirectoryError, match="corrupt"):
        PrefixStore(store_dir)


# ------------------------------------------------------------------------ every byte checked

def _flip_counter(path: Path) -> None:
    """One bit of the `num_tokens` counter in the header (issue 22: 286 -> 284 passed verify)."""
    data = bytearray(path.read_bytes())
    at = data.index(b'num_tokens\\": ') + len(b'num_tokens\\": ')
    data[at] ^= 0x02
    path.write_bytes(bytes(data))


def _flip_tensor(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("flip", [_flip_counter, _flip_tensor], ids=["counter", "tensor"])
def test_a_flipped_bit_is_caught_by_verify(tiny: Tiny, store_dir: Path, flip: object) -> None:
    bad = _snapshot(store_dir, tiny)
    flip(bad)
    found = PrefixStore(store_dir, chunk_tokens=CHUNK).verify().bad
    assert len(found) == 1 and str(bad) in found[0] and "checksum" in found[0]
    assert not bad.exists()


@pytest.mark.parametrize("flip", [_flip_counter, _flip_tensor], ids=["counter", "tensor"])
def test_a_flipped_bit_is_caught_on_load_and_not_reused(tiny: Tiny, store_dir: Path, flip: object) -> None:
    bad = _snapshot(store_dir, tiny)
    flip(bad)
    warnings: list[str] = []
    _, logits, stats = PrefixStore(store_dir, chunk_tokens=CHUNK, warn=warnings.append).prefill(tiny.engine, tiny.ids)
    assert stats.reused_tokens == 256  # the snapshot before it
    assert float((logits - tiny.cold).abs().max() / tiny.cold.abs().max()) < 1e-5
    assert len(warnings) == 1 and "checksum" in warnings[0] and "deleting it" in warnings[0]


def test_a_corrupt_file_the_store_did_not_write_is_not_deleted(tiny: Tiny, store_dir: Path) -> None:
    bad = _snapshot(store_dir, tiny)
    PrefixStore(store_dir).root.record(set())  # as if another tool had put the files there
    _flip_tensor(bad)
    corrupted = bad.read_bytes()
    warnings: list[str] = []
    _, logits, stats = PrefixStore(store_dir, chunk_tokens=CHUNK, warn=warnings.append).prefill(tiny.engine, tiny.ids)
    assert stats.reused_tokens == 256 and "leaving it alone" in warnings[0]
    assert bad.read_bytes() == corrupted  # neither deleted nor overwritten


# ------------------------------------------------------------------------ misdirected stores

def test_engram_dir_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "engram"
    path.write_text("notes")
    with pytest.raises(StoreDirectoryError, match="is a file"):
        PrefixStore(path)
    assert path.read_text() == "notes"


def test_an_entry_path_that_is_a_directory(tiny: Tiny, store_dir: Path, no_forward: None) -> None:
    entry = _snapshot(store_dir, tiny)
    entry.unlink()
    entry.mkdir()  # a directory named <key>.safetensors
    store = PrefixStore(store_dir, chunk_tokens=CHUNK)
    with pytest.raises(StoreDirectoryError, match=f"{entry.name} is not a regular file"):
        store.prefill(tiny.engine, tiny.ids)
    found = store.verify().bad
    assert len(found) == 1 and "left alone" in found[0] and entry.is_dir()
    assert store.stats()["files"] > 0


def _make_read_only(directory: Path) -> None:
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return
    # root ignores permission bits; the immutable attribute holds even for root
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr: cannot make a directory read-only")


def _make_writable(directory: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(directory)], capture_output=True)
    directory.chmod(0o755)


def test_a_read_only_store(tiny: Tiny, store_dir: Path, no_forward: None) -> None:
    _make_read_only(store_dir)
    try:
        store = PrefixStore(store_dir, chunk_tokens=CHUNK)
        assert store.stats()["files"] > 0  # reading is fine
        for action in (lambda: store.prefill(tiny.engine, tiny.ids[:-1]), store.verify, store.clear):
            with pytest.raises(StoreDirectoryError, match="not writable"):
                action()
    finally:
        _make_writable(store_dir)
    assert store.stats()["files"] > 0


def test_the_default_directory_is_named_by_format_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade starts a new default store rather than refusing the old one on every run."""
    from v4.model.prefix_store_files import FORMAT_VERSION
    from v4.model.prefix_store import default_store_dir

    monkeypatch.delenv("V4_ENGRAM_DIR", raising=False)
    assert default_store_dir().name == f"engram-v{FORMAT_VERSION}"


def test_a_store_being_created_by_another_process_is_not_foreign(tmp_path: Path) -> None:
    """Between its mkdir and its manifest, a new store holds only the manifest's temporary file."""
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / ".tmp-manifest-abc").write_text("{")
    PrefixStore(tmp_path / "store").prepare()
    assert (tmp_path / MANIFEST).exists() is False and (tmp_path / "store" / MANIFEST).is_file()
