"""`v4 store stats|clear|verify` (and its old name `v4 engram`) and `v4 prefill` against a misdirected
`--store-dir` (issue 22): a clear message and exit status, nothing deleted, and no model loaded or
prefill computed."""

from __future__ import annotations

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
