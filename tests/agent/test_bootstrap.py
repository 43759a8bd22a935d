"""agent/bootstrap.py, context.py and demo.py: what every front end reaches through agent/ (the demo
checkpoint, the context with /add and /drop, changed files, backend descriptions and the prefill)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from v4.agent.bootstrap import describe_backend, open_backend, prefill
from v4.agent.chat_format import Message
from v4.agent.context import STABLE_SLACK, ContextError, RepositoryContext
from v4.agent.demo import DEMO_NAME, demo_checkpoint
from v4.agent.options import BackendOptions
from v4.agent.prompts import system_message
from v4.model.random_checkpoint import RANDOM_MARKER


def _repo(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir()
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    return root


@pytest.fixture()
def context(tmp_path: Path) -> RepositoryContext:
    big = "".join(f"def function_{n}(value):\n    return value * {n}\n\n\n" for n in range(60))
    root = _repo(tmp_path / "repo", {"small.py": "X = 1\n", "big.py": big, "logo.png": b"\x89PNG\r\n\x1a\n\0\0"})
    context = RepositoryContext(root, None)
    context.scan()
    return context


def test_needs_demo_only_when_no_model_is_named() -> None:
    assert BackendOptions().names_no_model
    assert not BackendOptions(replay=Path("r.json")).names_no_model
    assert not BackendOptions(model=Path("m")).names_no_model


def test_drop_filters_the_file_out_of_the_system_message(context: RepositoryContext) -> None:
    view = context.plan(100_000)
    assert {f.path: f.mode for f in view.files} == {"small.py": "full", "big.py": "full"}
    context.drop("./small.py")
    view = context.plan(100_000)
    assert {f.path: (f.mode, f.forced) for f in view.files}["small.py"] == ("dropped", "dropped")
    assert "==> small.py" not in context.repository_text() and "==> big.py" in context.repository_text()
    assert view.total_tokens == sum(f.tokens for f in view.files)


def test_add_forces_an_outlined_file_in_full(context: RepositoryContext) -> None:
    view = context.plan(200)  # big.py does not fit in full
    assert {f.path: f.mode for f in view.files}["big.py"] != "full"
    context.add("big.py")
    view = context.plan(200)
    row = {f.path: f for f in view.files}["big.py"]
    assert (row.mode, row.forced) == ("full", "added") and row.tokens > 200
    assert "def function_59(value):" in context.repository_text()
    context.drop("big.py")  # dropping undoes the add
    assert "big.py" not in context.forced_in


def test_unknown_and_skipped_paths_are_refused(context: RepositoryContext) -> None:
    context.plan(100_000)
    with pytest.raises(ContextError, match="not a file of this repository"):
        context.add("nowhere.py")
    with pytest.raises(ContextError, match="left out of the index: binary"):
        context.add("logo.png")


def test_changed_files_since_the_plan(context: RepositoryContext) -> None:
    context.plan(100_000)
    assert context.changed_files() == []
    (context.root / "small.py").write_text("X = 2\n")
    assert context.changed_files() == ["small.py"]
    view = context.plan(100_000)  # a new plan re-reads the changed file: nothing is stale any more
    assert context.changed_files() == [] and "X = 2" in context.repository_text()
    assert {f.path for f in view.files} == {"small.py", "big.py"}
    (context.root / "big.py").unlink()
    assert context.changed_files() == ["big.py"]


def test_describe_a_replay_backend(tmp_path: Path) -> None:
    script = tmp_path / "answers.json"
    script.write_text(json.dumps(["hi"]))
    options = BackendOptions(replay=script)
    info = describe_backend(open_backend(options), options)
    assert (info.kind, info.model, info.random_weights, info.state_bytes_per_token) == \
        ("replay", "answers.json", False, None)
    assert prefill(open_backend(options).backend, system_message("repo")) is None


def test_demo_checkpoint_is_made_once_and_is_labelled_random(tmp_path: Path) -> None:
    """The default model of `v4`: made on first use, loaded, described and prefilled like any checkpoint."""
    path = demo_checkpoint(tmp_path)
    assert path == tmp_path / DEMO_NAME and (path / RANDOM_MARKER).is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert demo_checkpoint(tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not made again
    assert not list(tmp_path.glob(".demo-tiny.*"))

    options = BackendOptions(model=path, store_dir=tmp_path / "engram")
    chosen = open_backend(options)
    info = describe_backend(chosen, options)
    assert (info.kind, info.model, info.random_weights) == ("embedded", DEMO_NAME, True)
    assert info.state_bytes_per_token and info.state_bytes_per_token > 0
    system = Message("system", "==> a.py <==\nX = 1\n")  # short: CPU prefill is slow, the path is the same
    cold = prefill(chosen.backend, system)
    assert cold.tokens > 0 and cold.computed_tokens == cold.tokens and cold.from_store
    again = prefill(chosen.backend, system)  # the state already holds it: nothing computed
    assert (again.reused_tokens, again.computed_tokens, again.from_store) == (cold.tokens, 0, False)


def _over_budget(tmp_path: Path) -> tuple[RepositoryContext, int]:
    """A repository three times its budget, of many small files, and a budget the plan fills exactly."""
    files = {f"m{n:02}.py": "".join(f"V{n}_{k} = {k}\n" for k in range(3 + n % 7)) for n in range(40)}
    context = RepositoryContext(_repo(tmp_path / "many", files), None)
    context.scan()
    budget = context.plan(context.plan(10**6).total_tokens // 3).total_tokens
    return context, budget


@pytest.mark.parametrize("stable", [False, True])
def test_a_stable_replan_keeps_every_other_files_mode(tmp_path: Path, stable: bool) -> None:
    context, budget = _over_budget(tmp_path)
    view = context.plan(budget)
    before = {f.path: f.mode for f in view.files}
    text = context.repository_text()
    grown = next(f.path for f in view.files if f.mode == "full")
    with open(context.root / grown, "a") as handle:
        handle.write("# one more line\n")
    after = context.plan(budget, stable=stable)
    moved = {f.path for f in after.files if f.mode != before[f.path]}
    if not stable:  # the planner, with no room left, swaps other files in and out
        assert moved - {grown}
        return
    assert moved == set() and after.total_tokens <= budget * (1 + STABLE_SLACK)
    assert context.repository_text().startswith(text[: text.index(f"==> {grown} <==")])  # only its tail moved


def test_a_stable_replan_gives_way_to_the_planner_past_the_slack(tmp_path: Path) -> None:
    context, budget = _over_budget(tmp_path)
    view = context.plan(budget)
    grown = next(f.path for f in view.files if f.mode == "full")
    with open(context.root / grown, "a") as handle:
        handle.write("".join(f"EXTRA_{k} = {k}\n" for k in range(200)))
    assert context.plan(budget, stable=True).total_tokens <= budget
