"""What gets installed and imported is unambiguous (issue 19): one `v4` namespace in the wheel, and our
engine beside transformers (and Hugging Face's `kernels`, which it imports) in one process, from the
repository root and from an installed wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.test_layering import PACKAGES, ROOT

PACKAGE_DATA = ("v4/repo_index/data/tokenizer.json", "v4/repo_index/queries/python.scm", "v4/tui/screens/main.tcss")
SOURCE_IGNORE = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "build", "dist", "*.egg-info", ".pytest_cache",
                                       "tests", "benchmarks", ".v4")

# Every probe runs in a fresh interpreter and starts here: transformers and its hub-kernels integration
# (which does `from kernels import ...` when Hugging Face's kernels is installed; a GPU image may lack it).
PRELUDE = textwrap.dedent("""
    import importlib.metadata, json, sys, tempfile
    from pathlib import Path
    import torch, transformers
    import transformers.integrations.hub_kernels
    try:
        importlib.metadata.distribution("kernels")
        import kernels
        kernels_file = kernels.__file__
    except importlib.metadata.PackageNotFoundError:
        kernels_file = None
""")

# transformers' V4 and our engine on the same weights.
PARITY_PROBE = PRELUDE + textwrap.dedent("""
    from v4 import model
    from tests.model.conftest import TINY, randomize
    config = transformers.DeepseekV4Config(**TINY)
    torch.manual_seed(0)
    reference = transformers.DeepseekV4ForCausalLM(config).eval()
    randomize(reference, seed=1)
    ids = list(range(3, 22))
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        engine = model.load(directory, device="cpu")
        ours = engine.forward(ids, engine.new_state(64))
    with torch.no_grad():
        theirs = reference(torch.tensor([ids])).logits[0].float()
    print(json.dumps({"kernels": kernels_file, "model": model.__file__, "path0": sys.path[0],
                      "error": ((ours - theirs).norm() / theirs.norm()).item()}))
""")

# From an installed wheel, outside any source tree: transformers' V4 importable beside the engine on a
# random checkpoint, the package data (tokenizer, tree-sitter queries) through an index, and the CLI module.
WHEEL_PROBE = PRELUDE + textwrap.dedent("""
    from transformers import DeepseekV4ForCausalLM
    import v4
    from v4 import model
    from v4.cli.main import build_parser
    from v4.model.random_checkpoint import init_checkpoint
    from v4.repo_index import RepoIndex
    with tempfile.TemporaryDirectory() as directory:
        tiny = init_checkpoint(Path(directory) / "tiny", "tiny", seed=0)
        engine = model.load(tiny, device="cpu")
        logits = engine.forward([1, 2, 3], engine.new_state(16))
        tree = Path(directory) / "tree"
        tree.mkdir()
        (tree / "a.py").write_text("def add(a, b):\\n    return a + b\\n")
        plan = RepoIndex(tree).plan(1000)
    print(json.dumps({"v4": v4.__file__, "kernels": kernels_file, "finite": bool(logits.isfinite().all()),
                      "segments": len(plan.segments), "parser": build_parser().prog}))
""")


def _probe(code: str, cwd: Path, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _is_hugging_faces(module_file: Path) -> bool:
    """`kernels` was imported from an installed distribution, not from our folder."""
    return module_file.parent.parent.name == "site-packages"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the source (a build writes build/ and *.egg-info beside the sources)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=SOURCE_IGNORE)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                           "-w", str(work / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    # issue 24: setuptools' warnings (the license's format, data folders not listed as packages) are defects
    warnings = [line for line in (done.stdout + done.stderr).splitlines() if "Warning" in line]
    assert warnings == []
    (built,) = (work / "dist").glob("v4_agent-*.whl")
    return built


def test_the_wheel_installs_one_namespace_and_every_module(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"v4"}
    expected = {f"v4/{path.relative_to(ROOT).as_posix()}" for folder in PACKAGES
                for path in (ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts}
    assert expected - set(names) == set()  # a new subpackage must be listed in pyproject.toml
    assert set(PACKAGE_DATA) <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)  # pyproject says MIT: the text ships
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "v4 = v4.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_no_top_level_folder_is_a_regular_package_named_kernels() -> None:
    """From the repository root (on sys.path under `python -m pytest`), a `kernels/__init__.py` would
    shadow Hugging Face's `kernels`; the folder is reached only as v4.kernels."""
    assert not (ROOT / "kernels" / "__init__.py").exists()


def test_transformers_v4_and_our_engine_in_one_process_from_the_repository_root() -> None:
    pytest.importorskip("transformers")
    result = _probe(PARITY_PROBE, cwd=ROOT)
    assert result["path0"] == ""  # `-c` puts the current directory, the repository root, first
    assert Path(result["model"]).parent == ROOT / "model"
    assert result["kernels"] is None or _is_hugging_faces(Path(result["kernels"]))
    assert result["error"] < 1e-4


def test_an_installed_wheel_works_beside_transformers(wheel: Path, tmp_path: Path) -> None:
    """`pip install` of the wheel into a directory (torch, transformers and Hugging Face's kernels come
    from this venv), imported from outside the source tree."""
    pytest.importorskip("transformers")
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) == ["bin", "v4"]
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = _probe(WHEEL_PROBE, cwd=tmp_path, env=env)
    assert Path(result["v4"]).parent == target / "v4"
    assert result["kernels"] is None or _is_hugging_faces(Path(result["kernels"]))
    assert result["finite"] and result["segments"] >= 1 and result["parser"] == "v4"


def test_make_run_opens_the_directory_it_was_started_from(tmp_path: Path) -> None:
    """Issue 24: `make -C path/to/v4 run` from a project opened the v4 checkout itself."""
    env = {**os.environ, "PWD": str(tmp_path)}
    done = subprocess.run(["make", "-n", "-C", str(ROOT), "run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, check=True)
    assert f'cd "{tmp_path}" && "{ROOT}/.venv/bin/v4"' in done.stdout
    done = subprocess.run(["make", "-n", "-C", str(ROOT), "run", "REPO=/elsewhere"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=True)
    assert 'cd "/elsewhere"' in done.stdout
