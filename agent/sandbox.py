"""Run one shell command for the model, confined the way Codex CLI and Claude Code confine theirs on Linux.

`BwrapSandbox` runs `bash -c COMMAND` under bubblewrap (`bwrap`, Debian's `bubblewrap`):

- the whole file system is bound read-only, then a private tmpfs goes on /tmp, then the repository
  root is bound writable (after the tmpfs, so a repository under /tmp stays visible), then the
  repository's `.git` and git's own directories (a worktree's git dir and common dir) are bound
  read-only again on top: the model can edit the work tree but not history, hooks or config;
- /dev is a minimal devtmpfs and /proc a fresh one for the sandbox's own PID namespace;
- every namespace bwrap supports is unshared (user, PID, IPC, UTS, cgroup and, unless
  `allow_network`, network: only a loopback of its own), capabilities are dropped, nested user
  namespaces are disabled, and a seccomp filter refuses `socket(AF_UNIX, ...)` (a read-only mount
  does not stop `connect` to a host socket such as Docker's, which would undo all of the above);
- it dies with v4 (`--die-with-parent`), runs in a new session (no TIOCSTI into the user's
  terminal), gets /dev/null as stdin, and sees a small explicit environment: PATH, HOME (an empty
  directory on the private /tmp), LANG, TERM=dumb, TMPDIR, plus what the user allowed — never v4's
  own environment, where API keys live.

`NoSandbox` (the user's explicit `--no-sandbox`) runs the same command unconfined, with the same
environment rule (but the real HOME), timeout and output handling. Both return a `CommandResult`
whose `for_model()` is what the model reads: the output as produced (stdout and stderr on one
pipe), its head and tail kept when it is long, and how the command ended. A timeout kills the whole
process tree: the PID namespace under bwrap, the process group without it.

(bwrap's own process is killed last, and waited for: it exits only once the namespace is empty, so
`run` returns when nothing of the command is left.)

`BwrapSandbox.probe()` starts a real sandbox once; where it cannot (bwrap missing, user namespaces
disabled in a container), it raises `SandboxUnavailable` saying why, and `run` refuses every command.
"""

from __future__ import annotations

import codecs
import json
import os
import selectors
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = ["BwrapSandbox", "CommandResult", "CommandRunner", "NoSandbox", "SandboxConfig", "SandboxUnavailable",
           "open_runner"]

SANDBOX_HOME = "/tmp/v4-home"  # on the sandbox's private /tmp
EXIT_GRACE_S = 0.5  # after the command exits, how long a background child may keep the pipe open
PROBE_TIMEOUT_S = 10.0


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot start on this machine; the message says why and what the user can do."""


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """How commands run: network, timeout, how much output the model sees, extra environment."""

    allow_network: bool = False
    timeout_s: float = 120.0
    head_chars: int = 4000  # kept from the start of long output
    tail_chars: int = 4000  # kept from its end
    env: Mapping[str, str] = field(default_factory=dict)  # variables the user passes through
    bwrap: str = "bwrap"

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.head_chars < 0 or self.tail_chars < 0:
            raise ValueError(f"head_chars and tail_chars must be >= 0, got {self.head_chars}, {self.tail_chars}")
        bad = [name for name in self.env if not name or "=" in name or "\0" in name or "\0" in self.env[name]]
        if bad:
            raise ValueError(f"invalid environment variable names or values: {', '.join(map(repr, bad))}")


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How one command ended and what it printed (already cut to the head and tail)."""

    command: str
    output: str
    exit_code: int | None  # None: timed out, or killed by a signal
    timed_out: bool = False
    signal: int | None = None
    omitted_chars: int = 0
    timeout_s: float = 0.0

    def status(self) -> str:
        """One line saying how the command ended."""
        if self.timed_out:
            return (f"[timed out after {self.timeout_s:g} s: the command and every process it started "
                    "were killed]")
        if self.signal is not None:
            return f"[killed by signal {signal.Signals(self.signal).name}]"
        return f"[exit code {self.exit_code}]"

    def for_model(self) -> str:
        """The text the model reads as the tool's result."""
        body = self.output if self.output else "(no output)\n"
        return body + ("" if body.endswith("\n") else "\n") + self.status()


class CommandRunner(Protocol):
    """Runs one shell command in the repository root (sandboxed or not)."""

    root: Path

    def run(self, command: str) -> CommandResult: ...


class BwrapSandbox:
    """Commands under bubblewrap; see the module docstring for what is confined and how."""

    def __init__(self, root: str | os.PathLike[str], config: SandboxConfig | None = None) -> None:
        self.root = Path(root).resolve()
        if self.root == Path("/"):
            raise ValueError("the repository root cannot be / (it would make the whole file system writable)")
        self.config = config or SandboxConfig()
        self._probe_error: str | None = None
        self._probed = False

    def probe(self) -> None:
        """Start a real sandbox once (`true` under the full setup); SandboxUnavailable if that fails."""
        if not self._probed:
            self._probe_error = self._probe()
            self._probed = True
        if self._probe_error is not None:
            raise SandboxUnavailable(self._probe_error)

    def _probe(self) -> str | None:
        refuse = "v4 refuses to run commands unless you pass --no-sandbox (which runs them unconfined)."
        if shutil.which(self.config.bwrap) is None:
            return (f"the command sandbox needs bubblewrap, and `{self.config.bwrap}` is not installed "
                    f"(Debian and Ubuntu: apt-get install bubblewrap). {refuse}")
        if _seccomp_program() is None:
            return f"the command sandbox has no seccomp filter for this machine ({os.uname().machine}). {refuse}"
        result = self._execute("true", PROBE_TIMEOUT_S)
        if result.exit_code == 0:
            return None
        said = " ".join(result.output.split()).rstrip(".") or result.status()
        return f"bubblewrap cannot start a sandbox here ({said}).{_namespace_hint()} {refuse}"

    def argv(self, command: str, seccomp_fd: int, info_fd: int) -> list[str]:
        """The bwrap command line; mount order matters (later mounts cover earlier ones)."""
        root = str(self.root)
        args = [self.config.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--tmpfs", "/tmp", "--dir", SANDBOX_HOME, "--bind", root, root]
        for path in _git_paths(self.root):
            args += ["--ro-bind", str(path), str(path)]
        args += ["--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL",
                 "--die-with-parent", "--new-session", "--seccomp", str(seccomp_fd), "--info-fd", str(info_fd),
                 "--chdir", root, "--clearenv"]
        if self.config.allow_network:
            args.append("--share-net")
        for name, value in _environment(self.config, home=SANDBOX_HOME, tmpdir="/tmp").items():
            args += ["--setenv", name, value]
        return args + ["--", _shell(), "-c", command]

    def run(self, command: str) -> CommandResult:
        """Run `command` in the sandbox; SandboxUnavailable (nothing run) where it cannot start."""
        self.probe()
        return self._execute(command, self.config.timeout_s)

    def _execute(self, command: str, timeout_s: float) -> CommandResult:
        program = _seccomp_program()
        assert program is not None, "probe() checks the machine first"
        seccomp_read, seccomp_write = os.pipe()
        info_read, info_write = os.pipe()
        try:
            os.write(seccomp_write, program)  # a few hundred bytes: fits the pipe buffer
            os.close(seccomp_write)
            seccomp_write = -1
            argv = self.argv(command, seccomp_read, info_write)
            return _execute(command, argv, cwd=self.root, env={}, config=self.config, timeout_s=timeout_s,
                            pass_fds=(seccomp_read, info_write), kill_tree=lambda: _kill_namespace(info_read))
        finally:
            for fd in (seccomp_read, seccomp_write, info_read, info_write):
                if fd >= 0:
                    os.close(fd)


def _kill_namespace(info_fd: int) -> bool:
    """SIGKILL the sandbox's PID 1 (its host pid is in bwrap's --info-fd JSON): the kernel then kills
    every process in the namespace, and the outer bwrap exits only once they are all gone."""
    os.set_blocking(info_fd, False)
    try:
        info = json.loads(os.read(info_fd, 65536) or b"{}")
        os.kill(int(info["child-pid"]), signal.SIGKILL)
    except (BlockingIOError, ValueError, KeyError, TypeError, ProcessLookupError, PermissionError):
        return False  # bwrap had not started its child yet: killing the process group is enough
    return True


class NoSandbox:
    """Commands run directly (the user's `--no-sandbox`): same environment rule, timeout and output."""

    def __init__(self, root: str | os.PathLike[str], config: SandboxConfig | None = None) -> None:
        self.root = Path(root).resolve()
        self.config = config or SandboxConfig()

    def run(self, command: str) -> CommandResult:
        """Run `command` in the repository root, unconfined."""
        env = _environment(self.config, home=os.environ.get("HOME", str(Path.home())),
                           tmpdir=os.environ.get("TMPDIR", "/tmp"))
        return _execute(command, [_shell(), "-c", command], cwd=self.root, env=env, config=self.config,
                        timeout_s=self.config.timeout_s, pass_fds=(), kill_tree=lambda: False)


def open_runner(root: str | os.PathLike[str], config: SandboxConfig | None = None, *,
                sandbox: bool = True) -> CommandRunner:
    """The runner for a session: a probed `BwrapSandbox` (SandboxUnavailable when it cannot start),
    or `NoSandbox` when the user turned the sandbox off."""
    if not sandbox:
        return NoSandbox(root, config)
    runner = BwrapSandbox(root, config)
    runner.probe()
    return runner


def _environment(config: SandboxConfig, *, home: str, tmpdir: str) -> dict[str, str]:
    """The small explicit environment a command sees: nothing of v4's own (API keys live there)."""
    env = {"PATH": os.environ.get("PATH") or os.defpath, "HOME": home, "LANG": os.environ.get("LANG", "C.UTF-8"),
           "TERM": "dumb", "TMPDIR": tmpdir}
    env.update(config.env)
    return env


def _shell() -> str:
    return shutil.which("bash") or "/bin/sh"


def _git_paths(root: Path) -> list[Path]:
    """What must stay read-only inside the sandbox: `.git` (a directory, or a worktree's file) and
    git's own directories, which for a worktree live elsewhere (perhaps under /tmp, hidden by the tmpfs)."""
    paths = [root / ".git"] if (root / ".git").exists() else []
    done = subprocess.run(["git", "rev-parse", "--absolute-git-dir", "--git-common-dir"], cwd=root,
                          capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    if done.returncode == 0:
        paths += [(root / line).resolve() for line in done.stdout.splitlines() if line.strip()]
    return [path for i, path in enumerate(paths) if path.exists() and path not in paths[:i]]


# --- seccomp: refuse socket(AF_UNIX, ...) ---------------------------------------------------------------

# machine -> (AUDIT_ARCH, __NR_socket); both little-endian, so args[0]'s low word is at offset 16
_AUDIT_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
_X32_SYSCALL_BIT = 0x40000000


def _seccomp_program() -> bytes | None:
    """A classic BPF program (struct sock_filter[]) for bwrap's --seccomp: socket(AF_UNIX, ...) fails
    with EPERM; system calls of a foreign ABI (x32, 32-bit) fail with ENOSYS, since their socket call
    cannot be inspected. None on machines this table does not know."""
    known = _AUDIT_ARCH.get(os.uname().machine)
    if known is None:
        return None
    arch, nr_socket = known
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    program = [
        (ld, 0, 0, 4),                     # 0: A = seccomp_data.arch
        (jeq, 1, 0, arch),                 # 1: native ABI -> 3
        (ret, 0, 0, enosys),               # 2
        (ld, 0, 0, 0),                     # 3: A = seccomp_data.nr
        (jge, 5, 0, _X32_SYSCALL_BIT) if arch == 0xC000003E else (jeq, 0, 0, 0),  # 4: x32 -> 10
        (jeq, 0, 3, nr_socket),            # 5: socket -> 6, else -> 9
        (ld, 0, 0, 16),                    # 6: A = low word of args[0] (the domain)
        (jeq, 0, 1, 1),                    # 7: AF_UNIX -> 8, else -> 9
        (ret, 0, 0, eperm),                # 8
        (ret, 0, 0, allow),                # 9
        (ret, 0, 0, enosys),               # 10
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def _namespace_hint() -> str:
    """Why user namespaces may be off on this machine, from the kernel's own switches."""
    checks = (("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone=0"),
              ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces=0"),
              ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
               "kernel.apparmor_restrict_unprivileged_userns=1 (AppArmor)"))
    found = [name for path, value, name in checks if _read_setting(path) == value]
    return (f" User namespaces are restricted here ({', '.join(found)})." if found
            else " User namespaces may be disabled here, as they are in many containers.")


def _read_setting(path: str) -> str | None:
    return Path(path).read_text().strip() if os.access(path, os.R_OK) else None


# --- running and capturing --------------------------------------------------------------------------------

class _Capture:
    """The head and tail of a stream of output, decoded as it arrives, with a count of what was cut."""

    def __init__(self, head_chars: int, tail_chars: int) -> None:
        self.head_chars, self.tail_chars = head_chars, tail_chars
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.head, self.tail = "", ""
        self.omitted_chars = self.omitted_lines = 0

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self.decoder.decode(data, final)
        room = self.head_chars - len(self.head)
        if room > 0:
            self.head, text = self.head + text[:room], text[room:]
        self.tail += text
        if len(self.tail) > 2 * self.tail_chars + 65536:  # trim in batches, not per chunk
            self._drop(len(self.tail) - self.tail_chars)

    def _drop(self, count: int) -> None:
        dropped, self.tail = self.tail[:count], self.tail[count:]
        self.omitted_chars += len(dropped)
        self.omitted_lines += dropped.count("\n")

    def text(self) -> str:
        """Everything, or the head, a line saying what was cut, and the tail (cut at line ends where cheap)."""
        self.feed(b"", final=True)
        if len(self.tail) > self.tail_chars:
            self._drop(len(self.tail) - self.tail_chars)
        if not self.omitted_chars:
            return self.head + self.tail
        cut = self.head.rfind("\n")
        if cut >= len(self.head) // 2:
            self.omitted_chars += len(self.head) - cut - 1
            self.head = self.head[:cut + 1]
        cut = self.tail.find("\n")
        if 0 <= cut < len(self.tail) // 2:
            self._drop(cut + 1)
        head = self.head if self.head.endswith("\n") or not self.head else self.head + "\n"
        return (f"{head}[... {self.omitted_chars:,} characters ({self.omitted_lines:,} lines) of output cut "
                f"here ...]\n{self.tail}")


def _execute(command: str, argv: list[str], *, cwd: Path, env: dict[str, str], config: SandboxConfig,
             timeout_s: float, pass_fds: tuple[int, ...], kill_tree: Callable[[], bool]) -> CommandResult:
    """Run `argv` in its own process group, reading its one output pipe until EOF or the deadline;
    then kill what is left: `kill_tree` (the PID namespace under bwrap), then the process group."""
    capture = _Capture(config.head_chars, config.tail_chars)
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        ended = _pump(selector, fd, capture, deadline, proc)
        if ended == "eof":  # output closed; the command may still be running
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                ended = "deadline"
        timed_out = ended == "deadline"
        if timed_out and kill_tree():
            try:  # bwrap exits once the namespace is empty: then nothing of the command is left
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(proc.pid)
        proc.wait()
        if ended != "eof":  # the pipe closes when its last writer is dead: wait for that, briefly
            _pump(selector, fd, capture, time.monotonic() + 1.0, None)
    proc.stdout.close()
    code = proc.returncode
    return CommandResult(command=command, output=capture.text(), exit_code=None if timed_out or code < 0 else code,
                         timed_out=timed_out, signal=-code if code < 0 and not timed_out else None,
                         omitted_chars=capture.omitted_chars, timeout_s=timeout_s)


def _pump(selector: selectors.BaseSelector, fd: int, capture: _Capture, deadline: float,
          proc: subprocess.Popen[bytes] | None) -> str:
    """Read output into `capture` until EOF ("eof"), `deadline` ("deadline") or, with `proc`, a
    moment after it exited while a background child still holds the pipe open ("exited")."""
    exited_at = None
    while True:
        now = time.monotonic()
        if now >= deadline:
            return "deadline"
        if proc is not None and exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > EXIT_GRACE_S:
            return "exited"
        if selector.select(timeout=min(deadline - now, 0.1)):
            chunk = os.read(fd, 65536)
            if not chunk:
                return "eof"
            capture.feed(chunk)


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group; under bwrap that kills its PID 1 and so the whole namespace."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
