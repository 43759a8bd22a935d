"""The command sandbox, with real commands under the real bubblewrap (skipped, with probe()'s reason,
where this machine cannot start it; the refusal path is tested everywhere)."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from v4.agent.sandbox import (BwrapSandbox, CommandRunner, NoSandbox, SandboxConfig, SandboxUnavailable,
                              open_runner)
from tests.conftest import git, make_repo

# A Python the sandbox can see: the test's own may live in a venv under /tmp, which the sandbox replaces
# with a private /tmp (a CI clone does), so take the system's.
PY = shlex.quote(shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable)


def _sandbox_problem() -> str | None:
    try:
        BwrapSandbox(Path.cwd()).probe()
    except SandboxUnavailable as exc:
        return str(exc)
    return None


PROBLEM = _sandbox_problem()
needs_sandbox = pytest.mark.skipif(PROBLEM is not None, reason=f"no working sandbox here: {PROBLEM}")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"a.txt": "a\n"})


def sandbox(root: Path, **config: object) -> BwrapSandbox:
    return BwrapSandbox(root, SandboxConfig(**config))  # type: ignore[arg-type]


@pytest.fixture
def tcp_server() -> Iterator[int]:
    """A loopback TCP server on the host that accepts and closes; yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@needs_sandbox
def test_a_write_inside_the_repository_works(repo: Path) -> None:
    result = sandbox(repo).run("echo made > new.txt && mkdir -p sub && echo more > sub/f && cat new.txt")
    assert result.exit_code == 0, result.for_model()
    assert result.output == "made\n"
    assert (repo / "new.txt").read_text() == "made\n" and (repo / "sub/f").read_text() == "more\n"


@needs_sandbox
def test_a_write_beside_the_repository_does_not_reach_the_host(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "beside").mkdir()
    (tmp_path / "beside" / "kept.txt").write_text("host\n")
    result = sandbox(repo).run("echo x > ../beside/kept.txt; echo x > ../beside/new.txt; echo x > ../top.txt;"
                               " mkdir -p ../made && echo x > ../made/f; true")
    assert result.exit_code == 0
    assert (tmp_path / "beside" / "kept.txt").read_text() == "host\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beside", "repo"]
    assert [p.name for p in (tmp_path / "beside").iterdir()] == ["kept.txt"]


@needs_sandbox
def test_the_rest_of_the_file_system_is_read_only(repo: Path) -> None:
    target = f"/usr/v4-sandbox-{uuid.uuid4().hex}"
    result = sandbox(repo).run(f"touch {target}")
    assert result.exit_code != 0 and "Read-only file system" in result.output
    assert not Path(target).exists()


@needs_sandbox
def test_home_is_a_private_writable_directory_and_the_real_home_is_untouched(repo: Path) -> None:
    real_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    name = f"v4-sandbox-{uuid.uuid4().hex}"
    result = sandbox(repo).run(f'echo x > "$HOME/{name}" && cat "$HOME/{name}" && echo "$HOME";'
                               f' touch {shlex.quote(str(real_home / name))}')
    try:
        assert result.output.startswith("x\n/tmp/v4-home\n"), result.output
        assert result.exit_code != 0  # the touch in the real home failed
        assert not (real_home / name).exists()
    finally:
        (real_home / name).unlink(missing_ok=True)


@needs_sandbox
def test_git_cannot_be_written_but_can_be_read(repo: Path) -> None:
    config = (repo / ".git" / "config").read_text()
    head = git(repo, "rev-parse", "HEAD")
    result = sandbox(repo).run("git log --oneline | wc -l; echo '[core] x' >> .git/config; rm -f .git/HEAD;"
                               " rm -rf .git; git -c user.name=a -c user.email=a@b commit -q --allow-empty -m x")
    assert result.output.startswith("1\n"), result.output
    assert result.exit_code != 0
    assert (repo / ".git" / "config").read_text() == config
    assert git(repo, "rev-parse", "HEAD") == head


@needs_sandbox
def test_a_worktree_keeps_its_git_directories_read_only(repo: Path, tmp_path: Path) -> None:
    git(repo, "worktree", "add", "-q", str(tmp_path / "wt"))
    common = repo / ".git" / "config"
    before = common.read_text()
    worktree_git = (tmp_path / "wt" / ".git").read_text()
    result = sandbox(tmp_path / "wt").run(
        'git log --oneline | wc -l; echo x >> "$(git rev-parse --git-common-dir)/config";'
        ' echo x >> "$(git rev-parse --absolute-git-dir)/HEAD"; echo gitdir: /elsewhere > .git; echo ok > f')
    assert result.output.startswith("1\n"), result.output  # git works: its directories are visible
    assert common.read_text() == before
    assert (tmp_path / "wt" / ".git").read_text() == worktree_git
    assert (tmp_path / "wt" / "f").read_text() == "ok\n"


@needs_sandbox
def test_network_is_refused_unless_allowed(repo: Path, tcp_server: int) -> None:
    connect = f"{PY} -c 'import socket; socket.create_connection((\"127.0.0.1\", {tcp_server}), 5); print(\"up\")'"
    refused = sandbox(repo).run(connect)
    assert refused.exit_code != 0 and "up" not in refused.output
    assert "ConnectionRefusedError" in refused.output or "unreachable" in refused.output.lower()
    allowed = sandbox(repo, allow_network=True).run(connect)
    assert (allowed.exit_code, allowed.output) == (0, "up\n")


@needs_sandbox
def test_unix_sockets_cannot_be_opened(repo: Path) -> None:
    command = f"{PY} -c 'import socket; socket.socket(socket.AF_UNIX); print(\"opened\")'"
    assert "PermissionError" in sandbox(repo).run(command).output
    assert NoSandbox(repo).run(command).output == "opened\n"


@needs_sandbox
def test_the_command_has_its_own_pid_namespace_and_a_small_environment(repo: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V4_API_KEY", "sk-secret-value")
    result = sandbox(repo, env={"EXTRA": "1"}).run("echo pid=$$; env | sort; pwd")
    lines = result.output.splitlines()
    assert int(lines[0].removeprefix("pid=")) <= 3  # bwrap's init is 1
    assert "sk-secret-value" not in result.output
    names = {line.split("=", 1)[0] for line in lines[1:-1]}
    assert {"PATH", "HOME", "LANG", "TERM", "TMPDIR", "EXTRA"} <= names
    assert names <= {"PATH", "HOME", "LANG", "TERM", "TMPDIR", "EXTRA", "PWD", "SHLVL", "_", "OLDPWD"}
    assert "TERM=dumb" in lines and lines[-1] == str(repo.resolve())


def _running_with(tag: str) -> list[int]:
    """PIDs whose command line contains `tag`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and tag.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("kind", [pytest.param("bwrap", marks=needs_sandbox), "none"])
def test_the_timeout_kills_the_command_and_its_children(repo: Path, kind: str) -> None:
    config = SandboxConfig(timeout_s=1)
    runner: CommandRunner = BwrapSandbox(repo, config) if kind == "bwrap" else NoSandbox(repo, config)
    tag = f"100.{uuid.uuid4().int % 10**9}"
    result = runner.run(f"echo started; sleep {tag} & (sleep {tag}); sleep {tag}")
    assert result.timed_out and result.exit_code is None
    assert result.output == "started\n"
    assert result.for_model().endswith("[timed out after 1 s: the command and every process it started were killed]")
    assert _running_with(tag) == []


@pytest.mark.parametrize("kind", [pytest.param("bwrap", marks=needs_sandbox), "none"])
def test_a_command_that_closes_its_output_still_times_out(repo: Path, kind: str) -> None:
    config = SandboxConfig(timeout_s=1)
    runner: CommandRunner = BwrapSandbox(repo, config) if kind == "bwrap" else NoSandbox(repo, config)
    tag = f"100.{uuid.uuid4().int % 10**9}"
    result = runner.run(f"echo bye; exec >&- 2>&-; sleep {tag}")
    assert (result.output, result.timed_out, result.exit_code) == ("bye\n", True, None)
    assert _running_with(tag) == []


@pytest.mark.parametrize("kind", [pytest.param("bwrap", marks=needs_sandbox), "none"])
def test_long_output_keeps_its_head_and_tail(repo: Path, kind: str) -> None:
    runner: CommandRunner = BwrapSandbox(repo) if kind == "bwrap" else NoSandbox(repo)
    result = runner.run("seq 1 100000")
    text = result.output
    assert text.startswith("1\n2\n3\n") and text.endswith("99999\n100000\n")
    assert len(text) < 8200 and result.omitted_chars > 500_000
    head, marker, tail = text.partition("[... ")
    assert marker and head.endswith("\n") and tail.split("\n", 1)[0].endswith("of output cut here ...]")
    kept = [int(n) for n in (head + tail.split("\n", 1)[1]).split()]
    assert kept == sorted(kept) and kept[-1] == 100000  # whole lines only
    assert result.exit_code == 0


@pytest.mark.parametrize("kind", [pytest.param("bwrap", marks=needs_sandbox), "none"])
def test_output_is_interleaved_and_the_exit_code_kept(repo: Path, kind: str) -> None:
    runner: CommandRunner = BwrapSandbox(repo) if kind == "bwrap" else NoSandbox(repo)
    result = runner.run("echo out; echo err >&2; echo out2; exit 3")
    assert (result.output, result.exit_code) == ("out\nerr\nout2\n", 3)
    assert result.for_model() == "out\nerr\nout2\n[exit code 3]"
    assert runner.run("true").for_model() == "(no output)\n[exit code 0]"


def test_short_output_is_kept_whole(repo: Path) -> None:
    result = NoSandbox(repo, SandboxConfig(head_chars=10, tail_chars=10)).run("printf 'x%.0s' $(seq 20)")
    assert (result.output, result.omitted_chars) == ("x" * 20, 0)


def test_a_background_child_does_not_hold_the_command_open(repo: Path) -> None:
    tag = f"100.{uuid.uuid4().int % 10**9}"
    result = NoSandbox(repo, SandboxConfig(timeout_s=30)).run(f"sleep {tag} & echo done")
    assert (result.output, result.exit_code, result.timed_out) == ("done\n", 0, False)
    assert _running_with(tag) == []


def test_without_bwrap_the_sandbox_refuses_and_says_why(repo: Path) -> None:
    runner = sandbox(repo, bwrap=str(repo / "no-such-bwrap"))
    with pytest.raises(SandboxUnavailable, match="needs bubblewrap.*--no-sandbox"):
        runner.probe()
    with pytest.raises(SandboxUnavailable):
        runner.run("touch ran.txt")
    assert not (repo / "ran.txt").exists()
    with pytest.raises(SandboxUnavailable):
        open_runner(repo, SandboxConfig(bwrap=str(repo / "no-such-bwrap")))
    assert isinstance(open_runner(repo, sandbox=False), NoSandbox)


def test_a_bwrap_that_cannot_start_is_reported_with_its_words(repo: Path, tmp_path: Path) -> None:
    """What bwrap prints in a container without user namespaces (a stand-in program that says it)."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    runner = sandbox(repo, bwrap=str(fake))
    with pytest.raises(SandboxUnavailable, match="No permissions to create new namespace.*--no-sandbox"):
        runner.run("touch ran.txt")
    assert not (repo / "ran.txt").exists()


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        SandboxConfig(timeout_s=0)
    with pytest.raises(ValueError, match="environment"):
        SandboxConfig(env={"A=B": "1"})
