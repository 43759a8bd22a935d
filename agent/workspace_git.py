"""Git plumbing for the workspace: commits built over a temporary index, so the user's own index is
never rebuilt, stashed or reset, and only the committed paths' entries change afterwards."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

_ZERO_OID = "0" * 40


class WorkspaceError(Exception):
    """Anything the workspace refuses to do (a git command that failed included); the message says why
    and what to do instead."""


class GitPlumbing:
    """The git commands the workspace runs, all with literal pathspecs in one work tree."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def commit_paths(self, paths: list[str], message: Callable[[list[tuple[str, str]]], str],
                     contents: Mapping[str, str | None] | None = None) -> str:
        """Commit `paths` on top of HEAD as the user: `contents` (None: delete) where given, else the
        work tree's; `message` makes the message from the commit's own (status, path) changes. The tree is built in a temporary index from HEAD, so the user's index is only
        touched afterwards, and only at `paths`, to match the new commit (as `git commit --only`)."""
        head = self.head()
        with tempfile.TemporaryDirectory(prefix="v4-index-") as tmp:
            env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
            self.git("read-tree", *([head] if head else ["--empty"]), env=env)
            if contents is None:
                self.git("update-index", "--add", "--remove", "--", *paths, env=env)
            else:
                self._stage_contents(paths, contents, head, env)
            tree = self.git("write-tree", env=env).strip()
            listed = self.git("ls-files", "-s", "-z", "--", *paths, env=env)
        base = f"{head}^{{tree}}" if head else self.git("hash-object", "-t", "tree", "/dev/null").strip()
        changes = self.git("diff-tree", "-r", "--no-renames", "--name-status", "-z", base, tree).split("\0")
        statuses = list(zip(changes[0::2], changes[1::2]))
        if not statuses:
            raise WorkspaceError(f"nothing to commit in {', '.join(paths)}")
        final = message(statuses)
        sha = self.git("commit-tree", tree, *(["-p", head] if head else []), "-F", "-", stdin=final).strip()
        self.git("update-ref", "-m", f"commit: {final.splitlines()[0]}", "HEAD", sha, head or "")
        self._sync_index(paths, [e for e in listed.split("\0") if e])
        return sha

    def _stage_contents(self, paths: list[str], contents: Mapping[str, str | None], head: str | None,
                        env: dict[str, str]) -> None:
        info = []
        for rel in paths:
            if contents[rel] is None:
                info.append(f"0 {_ZERO_OID}\t{rel}")
                continue
            blob = self.git("hash-object", "-w", "--stdin", stdin=contents[rel]).strip()
            info.append(f"{self._git_mode(rel, head)} {blob}\t{rel}")
        self.git("update-index", "-z", "--index-info", stdin="".join(f"{e}\0" for e in info), env=env)

    def _git_mode(self, rel: str, head: str | None) -> str:
        """HEAD's mode for `rel`, else the work-tree file's executable bit."""
        if head:
            listed = self.git("ls-tree", head, "--", rel).split()
            if listed and listed[0] in ("100644", "100755"):
                return listed[0]
        path = self.root / rel
        return "100755" if path.is_file() and os.stat(path).st_mode & stat.S_IXUSR else "100644"

    def _sync_index(self, paths: list[str], entries: list[str]) -> None:
        """Set the user's index entries for `paths` (only) to `entries` (`ls-files -s` lines)."""
        present = {e.split("\t", 1)[1] for e in entries}
        removed = [f"0 {_ZERO_OID}\t{p}" for p in paths if p not in present]
        self.git("update-index", "-z", "--index-info", stdin="".join(f"{e}\0" for e in entries + removed))

    def changed_paths(self, commit: str, only: str = "ACDMRTUXB") -> list[str]:
        """Paths `commit` changed against its first parent; `only` filters by status (D: deleted)."""
        parent = self.run("rev-parse", "--verify", "-q", f"{commit}^").stdout.strip()
        args = [f"{parent}", commit] if parent else ["--root", commit]
        out = self.git("diff-tree", "-r", "--no-renames", "--name-only", "--no-commit-id", "-z",
                        f"--diff-filter={only}", *args)
        return [p for p in out.split("\0") if p]

    def unmerged(self, paths: list[str]) -> list[str]:
        out = self.git("ls-files", "-u", "-z", "--", *paths)
        return sorted({e.split("\t", 1)[1] for e in out.split("\0") if e})

    def head(self) -> str | None:
        done = self.run("rev-parse", "--verify", "-q", "HEAD^{commit}")
        if done.returncode != 0:  # unborn branch: the repository has no commits yet
            return None
        return done.stdout.strip()

    def git(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
        done = self.run(*args, env=env, stdin=stdin)
        if done.returncode != 0:
            raise WorkspaceError(f"git {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def run(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None,
            literal: bool = True) -> subprocess.CompletedProcess[str]:
        """Run git with literal pathspecs (`literal`; check-ignore takes none) and no optional index
        writes (status must not touch it)."""
        full_env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", **(env or {})}
        flags = ["--literal-pathspecs"] if literal else []
        return subprocess.run(["git", *flags, "-C", str(self.root), *args],
                              input=stdin, capture_output=True, text=True, env=full_env,
                              encoding="utf-8", errors="surrogateescape")
