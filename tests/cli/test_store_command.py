"""`v4 store stats|clear|verify` (and its old name `v4 engram`) and `v4 prefill` against a misdirected
`--store-dir` (issue 22): a clear message and exit status, nothing deleted, and no model loaded or
prefill computed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from v4 import model
from v4.cli.main import main


def _model_folder(where: Path) -> dict[Path, bytes]:
    where.mkdir(parents=True)
    (where / "model.safetensors").write_bytes(b"weights" * 100)
    (where / "config.json").write_text("{}")
    return {p: p.read_bytes() for p in where.iterdir()}


@pytest.fixture()
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a model fails the test: the store is refused first."""
    def load(*args: object, **options: object) -> object:
        raise AssertionError("the model was loaded before the store was refused")

    monkeypatch.setattr(model, "load", load)


@pytest.mark.parametrize("action", ["stats", "verify", "clear"])
def test_engram_on_a_model_folder_is_refused_and_deletes_nothing(tmp_path: Path, capsys, action: str) -> None:
    files = _model_folder(tmp_path / "model")
    assert main(["engram", action, "--engram-dir", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("v4 engram: ") and "not a prefix-state store" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in files} == files
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]


def test_engram_dir_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "engram").write_text("notes")
    assert main(["engram", "verify", "--engram-dir", str(tmp_path / "engram")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "engram").read_text() == "notes"


def test_engram_on_an_empty_or_absent_directory(tmp_path: Path, capsys) -> None:
    assert main(["engram", "verify", "--engram-dir", str(tmp_path / "absent"), "--json"]) == 0
    assert not (tmp_path / "absent").exists()
    (tmp_path / "empty").mkdir()
    assert main(["engram", "clear", "--engram-dir", str(tmp_path / "empty")]) == 0
    assert main(["engram", "stats", "--engram-dir", str(tmp_path / "empty")]) == 0  # now a store: still fine


@pytest.mark.parametrize("case", ["file", "model folder"])
def test_prefill_refuses_the_store_before_loading_the_model(tmp_path: Path, capsys, no_load: None,
                                                            case: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    store = tmp_path / "engram"
    if case == "file":
        store.write_text("notes")
    else:
        _model_folder(store)
    before = {p: p.read_bytes() for p in store.rglob("*")} if store.is_dir() else store.read_bytes()
    assert main(["prefill", str(repo), "--model", str(tmp_path / "any"), "--engram-dir", str(store)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("v4 prefill: prefix-state store ") and "Traceback" not in err
    assert (({p: p.read_bytes() for p in store.rglob("*")} if store.is_dir() else store.read_bytes()) == before)


def test_verify_says_what_it_checked_and_fails_on_a_bad_entry(tmp_path: Path, capsys) -> None:
    """Issue 24: verify printed `ok 1` / `ok 0`, exited 0 after deleting a corrupt file and never said
    how many files it checked."""
    from v4.model.prefix_store import PrefixStore
    from tests.conftest import tiny_chat_checkpoint

    engine = model.load(tiny_chat_checkpoint(tmp_path / "ckpt", seed=0), device="cpu")
    store = tmp_path / "store"
    PrefixStore(store, chunk_tokens=64).prefill(engine, list(range(5, 205)), [100])
    assert main(["store", "verify", "--store-dir", str(store)]) == 0
    out = capsys.readouterr().out
    count = len(PrefixStore(store).files())
    assert count > 1 and f"checked {count} file(s)" in out and "all good" in out
    victim = sorted(PrefixStore(store).files())[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01  # one bit of a tensor
    victim.write_bytes(bytes(data))
    assert main(["store", "verify", "--store-dir", str(store)]) == 1
    out = capsys.readouterr().out
    assert f"checked {count} file(s)" in out and "1 bad, deleted" in out and victim.name in out
    assert main(["store", "verify", "--store-dir", str(store), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["checked_files"] == count - 1 and document["ok"] and document["bad_files_deleted"] == []


def test_prefill_says_what_it_prefills_and_the_next_run_reuses_it(tmp_path: Path, capsys) -> None:
    from tests.conftest import make_repo, tiny_chat_checkpoint

    checkpoint = tiny_chat_checkpoint(tmp_path, seed=0)
    repo = make_repo(tmp_path / "repo", {"calc.py": "def add(a, b):\n    return a + b\n"})
    argv = ["prefill", str(repo), "--model", str(checkpoint), "--store-dir", str(tmp_path / "store"), "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    first = json.loads(captured.out)
    assert "v4: prefilling " in captured.err and first["tokens"] > 0 and first["computed_tokens"] == first["tokens"]
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reused_tokens"] == again["tokens"] == first["tokens"]
