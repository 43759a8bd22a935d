"""Crash safety of apply_changes (issue 21): SIGKILLed applies are undone by `recover`, journals are checked."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from v4.agent.apply import JournalError, apply_changes, recover
from v4.agent.edits import FileChange
from v4.agent.journal import JOURNAL_NAME, sha256

REPO_ROOT = Path(__file__).resolve().parents[2]

# The child applies the changes in `spec`, counting file-system calls; it SIGKILLs itself just before
# call number `kill_at` ("after": once apply_changes has returned), or runs until the parent kills it.
# `pause` slows every call down, so that kills after a random delay spread over the whole apply.
CHILD = r"""
import json, os, signal, sys, time
from pathlib import Path
from v4.agent.apply import apply_changes
from v4.agent.edits import FileChange

spec = json.loads(Path(sys.argv[1]).read_text())
calls = []

def counted(name, real):
    def call(*args, **kwargs):
        calls.append([name, os.fspath(args[-1]) if args and not isinstance(args[-1], int) else ""])
        if len(calls) == spec["kill_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(spec["pause"])
        return real(*args, **kwargs)
    return call

for name in ("fsync", "link", "replace", "unlink", "mkdir", "rmdir"):
    setattr(os, name, counted(name, getattr(os, name)))
print("go", flush=True)
start = time.perf_counter()
apply_changes(Path(spec["root"]), [FileChange(*c) for c in spec["changes"]], Path(spec["journal_dir"]))
seconds = time.perf_counter() - start
if spec["kill_at"] == "after":
    os.kill(os.getpid(), signal.SIGKILL)
Path(spec["log"]).write_text(json.dumps({"calls": calls, "seconds": seconds}))
"""


def work_tree(root: Path) -> dict[str, object]:
    """Every entry under `root` except .git/: file bytes and mode, directories and their modes."""
    found: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if ".git" in rel.split("/"):
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        found[rel] = ("dir", mode) if path.is_dir() else (path.read_bytes(), mode)
    return found


def litter(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if ".v4-" in p.name)


def build_repo(root: Path) -> list[FileChange]:
    """300 small files in 10 directories, and changes that modify 200, delete 50 and create 50 (some in new dirs)."""
    rng = random.Random(7)
    changes = []
    for i in range(300):
        rel = f"d{i % 10}/f{i:03}.txt"
        text = "".join(f"line {j} of {i}\n" for j in range(rng.randint(1, 30)))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        (root / rel).chmod((0o644, 0o755, 0o600)[i % 3])
        if i < 200:
            changes.append(FileChange(rel, text, text.replace("line", "LINE", 1) + f"added {i}\n"))
        elif i < 250:
            changes.append(FileChange(rel, text, None))
    for i in range(50):
        rel = f"d{i % 10}/new{i:02}.txt" if i < 30 else f"fresh/sub{i % 4}/new{i:02}.txt"
        changes.append(FileChange(rel, None, f"new file {i}\n"))
    (root / ".git").mkdir()
    return changes


def run_child(tmp_path: Path, root: Path, changes: list[FileChange], kill_at: int | str | None,
              delay: float | None = None, pause: float = 0.0) -> dict | None:
    """Run one apply in a child; returns its call log if it finished, None if it was killed."""
    spec = tmp_path / "spec.json"
    log = tmp_path / "log.json"
    log.unlink(missing_ok=True)
    spec.write_text(json.dumps({"root": str(root), "journal_dir": str(root / ".git" / "v4"), "kill_at": kill_at,
                                "pause": pause, "log": str(log),
                                "changes": [[c.path, c.before, c.after] for c in changes]}))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(spec)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None and child.stdout.readline() == "go\n"
    if delay is not None:
        try:
            child.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
    code = child.wait(timeout=60)
    child.stdout.close()
    if code == -signal.SIGKILL:
        return None
    assert code == 0
    return json.loads(log.read_text())


def files(tree: dict[str, object]) -> dict[str, object]:
    return {rel: entry for rel, entry in tree.items() if entry[0] != "dir" and ".v4-" not in rel}


def phase_at_kill(root: Path, original: dict[str, object]) -> str:
    """Where the apply was when it died, judged from what it left on disk."""
    journal = root / ".git" / "v4" / JOURNAL_NAME
    if not journal.exists():
        return "before the journal" if files(work_tree(root)) == files(original) else "finished"
    if json.loads(journal.read_text())["state"] == "committed":
        return "cleanup"
    return "staging" if files(work_tree(root)) == files(original) else "renaming"


def call_phases(calls: list[list[str]]) -> dict[str, range]:
    """Call-number ranges in a complete run: staging (journal included), renaming into the tree, cleanup."""
    renames = [i for i, (name, dst) in enumerate(calls, 1) if name == "replace" and ".git" not in Path(dst).parts]
    return {"staging": range(1, renames[0]), "renaming": range(renames[0], renames[-1] + 1),
            "cleanup": range(renames[-1] + 1, len(calls) + 1)}


def new_repo(tmp_path: Path, name: str) -> tuple[Path, list[FileChange]]:
    root = tmp_path / name
    root.mkdir()
    return root, build_repo(root)


def test_sigkill_at_any_point_is_undone_by_recover(tmp_path: Path) -> None:
    """15 kills at counted file-system calls (5 per phase) and 6 after random delays, fixed seeds."""
    root, changes = new_repo(tmp_path, "dry")
    original = work_tree(root)
    pause = 0.0005  # about 0.5 s more for the ~1,000 calls of a timed run
    dry = run_child(tmp_path, root, changes, kill_at=None, pause=pause)
    assert dry is not None
    planned = work_tree(root)
    assert files(planned) != files(original) and litter(root) == []
    phases = call_phases(dry["calls"])

    rng = random.Random(21)
    kills = [("counted", rng.choice(phases[name])) for name in ("staging", "renaming", "cleanup") for _ in range(5)]
    kills += [("timed", rng.uniform(0.0, dry["seconds"])) for _ in range(6)]
    seen: Counter[str] = Counter()
    for number, (how, point) in enumerate(kills):
        root, changes = new_repo(tmp_path, f"kill{number}")
        timed = how == "timed"
        result = run_child(tmp_path, root, changes, kill_at=None if timed else point, delay=point if timed else None,
                           pause=pause if timed else 0.0)
        phase = phase_at_kill(root, original) if result is None else "not killed"
        seen[f"{how}: {phase}"] += 1
        lines = recover(root, root / ".git" / "v4")
        expected = planned if phase in {"cleanup", "finished", "not killed"} else original
        assert work_tree(root) == expected, (how, point, phase, lines[:5])
        assert litter(root) == [], (how, point, phase)
        assert sorted(p.name for p in (root / ".git" / "v4").iterdir()) == ["apply.lock"]
    calls = {name: len(calls) for name, calls in phases.items()}
    print(f"\n{len(kills)} SIGKILLs (calls per phase in a full run: {calls}; a timed run takes {dry['seconds']:.2f} s)"
          f": {dict(sorted(seen.items()))}")
    assert all(any(key.endswith(phase) for key in seen) for phase in ("staging", "renaming", "cleanup"))


def test_sigkill_after_the_apply_finished_leaves_the_planned_tree(tmp_path: Path) -> None:
    root, changes = new_repo(tmp_path, "repo")
    changes = changes[::10]
    assert run_child(tmp_path, root, changes, kill_at="after") is None
    assert not (root / ".git" / "v4" / JOURNAL_NAME).exists()
    assert recover(root, root / ".git" / "v4") == []
    for change in changes:
        path = root / change.path
        assert (path.read_text() if path.exists() else None) == change.after
    assert litter(root) == []


# --- recover, in process: a "crash" is an exception that skips the rollback -------------------


class Crash(BaseException):
    """Stands in for SIGKILL: nothing after it runs, not even the rollback."""


CHANGES = [
    FileChange("pkg/a.py", "a = 1\n", "a = 2\n"),
    FileChange("new/deep/n.py", None, "n = 1\n"),
    FileChange("pkg/b.py", "b = 1\n", None),
    FileChange("run.sh", "#!/bin/sh\necho hi\n", "#!/bin/sh\necho bye\n"),
]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("a = 1\n")
    (root / "pkg" / "b.py").write_text("b = 1\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / ".git").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret\n")
    return root


def everything(tmp_path: Path) -> dict[str, object]:
    """The whole temporary directory, journal and litter included, to show that nothing changed."""
    return {rel: entry for rel, entry in work_tree(tmp_path).items()} | {
        p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


def crash(repo: Path, monkeypatch: pytest.MonkeyPatch, at_rename: int) -> None:
    """Apply CHANGES with a journal and die just before the `at_rename`-th rename into the tree."""
    import v4.agent.apply as apply_module

    real_replace, renames = os.replace, []

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if ".git" not in Path(dst).parts:
            renames.append(dst)
            if len(renames) == at_rename:
                raise Crash
        real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(apply_module._Transaction, "rollback", lambda self: [])
        patch.setattr(os, "replace", replace)
        with pytest.raises(Crash):
            apply_changes(repo, CHANGES, repo / ".git" / "v4")
    assert (repo / ".git" / "v4" / JOURNAL_NAME).exists()


def test_journal_is_on_disk_before_the_first_rename(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crash(repo, monkeypatch, at_rename=1)
    journal = json.loads((repo / ".git" / "v4" / JOURNAL_NAME).read_text())
    assert journal["state"] == "pending" and journal["root"] == str(repo.resolve())
    assert journal["made_dirs"] == ["new", "new/deep"]
    by_path = {entry["path"]: entry for entry in journal["changes"]}
    assert list(by_path) == [c.path for c in CHANGES]
    for change in CHANGES:
        entry = by_path[change.path]
        assert entry["existed"] == (change.before is not None)
        assert entry["before_sha256"] == (change.before and sha256(change.before.encode()))
        assert entry["after_sha256"] == (change.after and sha256(change.after.encode()))
        folder = (repo / change.path).parent
        if change.after is not None:  # staged: the temp holds the new content, the backup is the original
            assert (folder / entry["temp"]).read_text() == change.after
        if change.before is not None and change.after is not None:
            assert (folder / entry["backup"]).read_text() == change.before
    assert by_path["pkg/b.py"]["temp"] is None and by_path["new/deep/n.py"]["backup"] is None


@pytest.mark.parametrize("at_rename", [1, 2, 3, 4])
def test_recover_rolls_back_an_interrupted_apply(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 at_rename: int) -> None:
    before = work_tree(tmp_path)
    crash(repo, monkeypatch, at_rename)
    lines = recover(repo, repo / ".git" / "v4")
    assert lines[0].startswith("rolled back an apply")
    assert len([line for line in lines if "restored" in line or "removed" in line]) == at_rename - 1
    assert work_tree(tmp_path) == before  # bytes and modes, no litter, no new directories, no journal
    assert recover(repo, repo / ".git" / "v4") == []


def test_apply_recovers_a_leftover_journal_first(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crash(repo, monkeypatch, at_rename=3)
    assert apply_changes(repo, CHANGES, repo / ".git" / "v4") == [c.path for c in CHANGES]
    assert (repo / "pkg" / "a.py").read_text() == "a = 2\n" and not (repo / "pkg" / "b.py").exists()
    assert litter(repo) == [] and not (repo / ".git" / "v4" / JOURNAL_NAME).exists()


def test_a_committed_journal_is_rolled_forward(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while removing backups: they cannot all be restored, so the apply is finished instead."""
    real_unlink = os.unlink

    def unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if str(path).endswith(".bak"):
            raise Crash
        real_unlink(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "unlink", unlink)
        with pytest.raises(Crash):
            apply_changes(repo, CHANGES, repo / ".git" / "v4")
    assert litter(repo)
    assert "had finished writing 4 file(s)" in recover(repo, repo / ".git" / "v4")[0]
    assert (repo / "pkg" / "a.py").read_text() == "a = 2\n" and (repo / "new" / "deep" / "n.py").exists()
    assert litter(repo) == [] and not (repo / ".git" / "v4" / JOURNAL_NAME).exists()


def test_recover_leaves_alone_what_someone_else_changed(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crash(repo, monkeypatch, at_rename=4)  # a.py modified, n.py created, b.py deleted
    (repo / "pkg" / "a.py").write_text("a = 2\nmine = 1\n")
    (repo / "new" / "deep" / "n.py").write_text("my own n\n")
    lines = recover(repo, repo / ".git" / "v4")
    assert (repo / "pkg" / "a.py").read_text() == "a = 2\nmine = 1\n"
    assert (repo / "new" / "deep" / "n.py").read_text() == "my own n\n"
    assert (repo / "pkg" / "b.py").read_text() == "b = 1\n"
    assert any(line.startswith("pkg/a.py: left as it is") and ".bak" in line for line in lines)
    assert any(line.startswith("new/deep/n.py: left as it is") for line in lines)
    assert [Path(p).parent.name for p in litter(repo)] == ["pkg"]  # a.py's original, kept on purpose


@pytest.mark.parametrize("text", ["{", "", "[]", "null", '{"format": "v4-apply-journal", "version": 1}',
                                  "[" * 100_000, b"\xff\xfe".decode("latin-1")])
def test_corrupt_journal_is_refused_and_changes_nothing(repo: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    crash(repo, monkeypatch, at_rename=3)
    journal = repo / ".git" / "v4" / JOURNAL_NAME
    journal.write_text(text, encoding="latin-1")
    before = everything(tmp_path)
    with pytest.raises(JournalError, match=f"{journal}.*nothing was changed|cannot read .*{journal}"):
        recover(repo, repo / ".git" / "v4")
    with pytest.raises(JournalError, match="interrupted and could not be undone, so nothing was written"):
        apply_changes(repo, [FileChange("pkg/a.py", "a = 1\n", "a = 5\n")], repo / ".git" / "v4")
    assert everything(tmp_path) == before


def tamper(repo: Path, **fields: object) -> None:
    journal = repo / ".git" / "v4" / JOURNAL_NAME
    data = json.loads(journal.read_text())
    data["changes"][1] |= fields  # new/deep/n.py, the created file: recover would delete its target
    if "path" in fields:  # a well-formed temp name for the new path, so that the path check is what refuses
        data["changes"][1]["temp"] = f".{Path(str(fields['path'])).name}.v4-0123abcd.tmp"
    journal.write_text(json.dumps(data))


@pytest.mark.parametrize("fields, match", [
    ({"path": "../outside/secret.txt"}, "leads outside the repository"),
    ({"path": "/etc/passwd"}, "absolute paths are not allowed"),
    ({"path": ".git/config"}, "inside .git/"),
    ({"path": "new/deep/../../pkg/a.py"}, "not a plain path"),
    ({"temp": "../../outside/secret.txt"}, "is not a .tmp file beside"),
    ({"temp": "important.txt"}, "is not a .tmp file beside"),
    ({"backup": ".n.py.v4-0123abcd.bak"}, "a new file has no backup"),
    ({"after_sha256": "x" * 64}, "bad sha256"),
])
def test_tampered_journal_is_refused(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     fields: dict[str, object], match: str) -> None:
    crash(repo, monkeypatch, at_rename=3)
    (repo / "pkg" / "important.txt").write_text("n = 1\n")  # what the journal's after_sha256 names
    (tmp_path / "outside" / "secret.txt").write_text("n = 1\n")
    tamper(repo, **fields)
    before = everything(tmp_path)
    with pytest.raises(JournalError, match=match):
        recover(repo, repo / ".git" / "v4")
    assert everything(tmp_path) == before


def test_journal_of_another_root_is_refused(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crash(repo, monkeypatch, at_rename=2)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(JournalError, match="was written for"):
        recover(other, repo / ".git" / "v4")


def test_a_live_apply_is_never_recovered(repo: Path) -> None:
    from v4.agent.journal import locked

    with locked(repo / ".git" / "v4"):  # another process's apply, as far as flock can tell
        with pytest.raises(JournalError, match="another v4 process is applying changes"):
            recover(repo, repo / ".git" / "v4")
        with pytest.raises(JournalError, match="another v4 process"):
            apply_changes(repo, CHANGES, repo / ".git" / "v4")
    assert (repo / "pkg" / "a.py").read_text() == "a = 1\n"


def test_recover_without_a_journal(repo: Path) -> None:
    assert recover(repo, repo / ".git" / "v4") == []
    assert not (repo / ".git" / "v4").exists()
