"""The git workspace: v4 edits files without ever losing the user's work.

Three promises, each kept by refusing rather than guessing:

* Before editing, files with uncommitted user changes are refused (`DirtyTreeError`), or, when the
  user asks for it, committed first in a commit of their own.
* Agent changes land in the work tree and are only committed after review: `pending()` splits them
  into hunks, `review()` reverts the rejected ones, `commit()` commits what is left.
* `undo()` removes the last v4 commit only when that cannot lose anything (see its docstring).

Commits are built with plumbing over a temporary index (GIT_INDEX_FILE): the user's own index is
never rebuilt, stashed or reset, so whatever they staged for other files stays staged. Git hooks do
not run for these commits (as with `git commit --no-verify`).

State lives in `<root>/.v4/` (ignored through its own `.gitignore` of `*`):
`pending.json` — `{"version": 1, "files": {path: {"before": str | null, "after_sha256": str | null}}}`
and `commits.json` — `{"version": 1, "commits": [{"sha", "kind": "agent" | "save", "paths", "subject"}]}`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import git

STATE_DIR = ".v4"
STATE_VERSION = 1
TRAILER = "Co-authored-by: v4 <v4@localhost>"
CONTEXT_LINES = 3
_ZERO_OID = "0" * 40
_NO_NEWLINE = "\\ No newline at end of file"


class WorkspaceError(Exception):
    """Anything the workspace refuses to do; the message says why and what to do instead."""


class DirtyTreeError(WorkspaceError):
    """Files v4 is about to edit hold uncommitted user changes."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        listed = "\n".join(f"  {p}" for p in paths)
        super().__init__(
            f"v4 will not edit files with uncommitted changes:\n{listed}\n"
            "Either commit or stash them yourself and run again, or pass --dirty-commit and v4 "
            "will first commit them (exactly those files) in a commit of their own."
        )


class UndoError(WorkspaceError):
    """`undo()` cannot remove the last commit without risking work or published history."""


@dataclass(frozen=True)
class Hunk:
    """One hunk of a pending change; `id` is derived from its content so stale ids never match."""

    id: str
    path: str
    header: str
    lines: tuple[str, ...]  # " context", "-removed", "+added" (and git's "\ No newline" marker)


@dataclass(frozen=True)
class FileDiff:
    """A pending v4 change to one file: added, modified or deleted."""

    path: str
    status: str
    hunks: tuple[Hunk, ...]

    @property
    def text(self) -> str:
        """The whole unified diff, as `git diff` would print it."""
        old = "/dev/null" if self.status == "added" else f"a/{self.path}"
        new = "/dev/null" if self.status == "deleted" else f"b/{self.path}"
        body = [line for hunk in self.hunks for line in (hunk.header, *hunk.lines)]
        return "\n".join([f"--- {old}", f"+++ {new}", *body]) + "\n"


Opcode = tuple[str, int, int, int, int]


class Workspace:
    """A git work tree that v4 edits; see the module docstring for the guarantees."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        try:
            self.repo = git.Repo(root, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise WorkspaceError(f"{root} is not a git repository") from None
        if self.repo.working_tree_dir is None:
            raise WorkspaceError(f"{root} is a bare git repository (no work tree to edit)")
        self.root = Path(self.repo.working_tree_dir).resolve()
        self.state_dir = self.root / STATE_DIR

    # -- before editing ------------------------------------------------------------------------

    def dirty_paths(self, paths: Iterable[str]) -> list[str]:
        """The given paths holding uncommitted user changes: staged, unstaged or untracked.

        Changes v4 itself made and has not committed yet are not the user's, so they do not count
        unless the user edited the file since. Ignored files never count: git does not track them.
        """
        rels = self._rels(paths)
        if not rels:
            return []
        out = self._git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames",
                        "--", *rels)
        reported = sorted({entry[3:] for entry in out.split("\0") if entry})
        own = self._load_pending()
        return [p for p in reported if not self._is_own_change(p, own.get(p))]

    def own_changes(self, paths: Iterable[str]) -> set[str]:
        """The given paths that hold exactly what v4 last wrote there (uncommitted): its own edits,
        not the user's (watch mode must not read them as new requests)."""
        own = self._load_pending()
        return {rel for rel in self._rels(paths) if self._is_own_change(rel, own.get(rel))}

    def prepare(self, paths: Iterable[str], dirty_commit: bool) -> str | None:
        """Make `paths` safe to edit; return the sha of the commit saving the user's changes, if any.

        Without `dirty_commit` nothing is touched: a dirty path raises `DirtyTreeError`.
        """
        dirty = self.dirty_paths(paths)
        if not dirty:
            return None
        if not dirty_commit:
            raise DirtyTreeError(dirty)
        unmerged = self._unmerged(dirty)
        if unmerged:
            raise WorkspaceError(f"resolve the merge conflicts in {', '.join(unmerged)} first")
        sha = self._commit_paths(dirty, _save_message(dirty))
        self._record_commit(sha, "save", dirty)
        pending = self._load_pending()  # those files' changes, v4's included, are now committed
        self._save_pending({p: e for p, e in pending.items() if p not in dirty})
        return sha

    def snapshot(self, paths: Iterable[str]) -> dict[str, str | None]:
        """The exact current contents (None: absent), for `record_agent_change`'s `before_contents`."""
        return {rel: self._read(rel) for rel in self._rels(paths)}

    # -- review --------------------------------------------------------------------------------

    def record_agent_change(self, paths: Iterable[str], before_contents: Mapping[str, str | None]) -> None:
        """Remember that v4 changed `paths` (already written); `before_contents` is what they held.

        A file changed twice keeps its first `before`, so review always shows everything v4 did
        since the last commit. The contents must be exact (newlines untranslated): rejecting a
        hunk writes them back.
        """
        pending = self._load_pending()
        for path in paths:
            rel = self._rel(path)
            if path in before_contents:
                before = before_contents[path]
            elif rel in before_contents:
                before = before_contents[rel]
            else:
                raise WorkspaceError(f"no before-content given for {rel}")
            entry = pending.setdefault(rel, {"before": before})
            current = self._read(rel)
            entry["after_sha256"] = _sha256(current)
            if current == entry["before"]:
                del pending[rel]
        self._save_pending(pending)

    def pending(self) -> list[FileDiff]:
        """v4's uncommitted changes, per file, split into hunks (before vs the work tree now)."""
        diffs = []
        for rel, entry in sorted(self._load_pending().items()):
            current = self._read(rel)
            if current != entry["before"]:
                diffs.append(_file_diff(rel, entry["before"], current)[0])
        return diffs

    def review(self, decisions: Mapping[str, bool]) -> list[FileDiff]:
        """Revert the rejected hunks (False) in the work tree; accepted and undecided ones stay.

        Every id must name a hunk of the current `pending()`, checked before any file is written.
        Returns what is still pending.
        """
        pending = self._load_pending()
        currents = {rel: self._read(rel) for rel in pending}
        plans = {rel: _file_diff(rel, e["before"], currents[rel]) for rel, e in pending.items()
                 if currents[rel] != e["before"]}
        known = {h.id for diff, _ in plans.values() for h in diff.hunks}
        unknown = sorted(set(decisions) - known)
        if unknown:
            raise WorkspaceError(f"no pending hunk with id {', '.join(unknown)} (pending changed?)")
        for rel, (diff, owner) in plans.items():
            rejected = {i for i, h in enumerate(diff.hunks) if h.id in decisions and not decisions[h.id]}
            if rejected:
                self._write(rel, _rebuild(diff, owner, rejected, pending[rel]["before"], currents[rel]))
                pending[rel]["after_sha256"] = _sha256(self._read(rel))
        self._save_pending({rel: e for rel, e in pending.items() if self._read(rel) != e["before"]})
        return self.pending()

    def commit(self, message: str | None = None) -> str:
        """Commit exactly the files with pending (accepted) v4 changes; return the new sha.

        The message ends with the Co-authored-by trailer; the user's other staged changes stay staged.
        """
        diffs = self.pending()
        if not diffs:
            raise WorkspaceError("no pending v4 changes to commit")
        paths = [d.path for d in diffs]
        sha = self._commit_paths(paths, _with_trailer(message or _summary(diffs)))
        self._record_commit(sha, "agent", paths)
        self._save_pending({})
        return sha

    # -- undo ----------------------------------------------------------------------------------

    def undo(self) -> str:
        """Remove the last v4 commit from the branch; return its sha (still in the reflog).

        Only when HEAD is a commit v4 made with `commit()`, it has a parent, no remote-tracking
        branch contains it, and the index and tracked files are clean. Then the branch moves back
        to the parent with `update-ref` guarded by the old sha (a soft reset that fails if HEAD
        moved meanwhile), and only the commit's own paths are restored from the parent in index
        and work tree. Nothing can be lost: the tree was clean, so those paths held exactly the
        commit's content, which stays reachable through the commit and the reflog; no other path
        is touched; a crash between the two steps leaves the commit's changes as uncommitted edits.
        """
        head = self._head()
        if head is None:
            raise UndoError("the repository has no commits")
        record = next((c for c in self._load_commits() if c["sha"] == head), None)
        self._check_undoable(head, record)
        parent = self._git("rev-parse", f"{head}^").strip()
        paths = self._changed_paths(head)
        self._git("update-ref", "-m", "v4: undo", "HEAD", parent, head)
        if paths:
            self._git("restore", f"--source={parent}", "--staged", "--worktree", "--", *paths)
        self._save_commits([c for c in self._load_commits() if c["sha"] != head])
        return head

    def _check_undoable(self, head: str, record: dict | None) -> None:
        """Raise `UndoError` naming the first reason HEAD cannot be undone safely."""
        title = f"HEAD {head[:12]} ({self._git('log', '-1', '--format=%s', head).strip()})"
        if record is None:
            raise UndoError(f"{title} is not a commit v4 made; v4 only undoes its own last commit")
        if record["kind"] == "save":
            raise UndoError(f"{title} holds your own changes, saved before v4 edited; "
                            "undo it yourself if you mean to (git reset --soft HEAD~1)")
        if not self._git("rev-list", "--parents", "-n", "1", head).split()[1:]:
            raise UndoError(f"{title} is the repository's first commit; v4 will not remove it")
        remotes = self._git("for-each-ref", "--contains", head, "--format=%(refname:short)",
                            "refs/remotes").split()
        if remotes:
            raise UndoError(f"{title} is already pushed ({', '.join(remotes)}); "
                            f"use git revert {head[:12]} to undo it publicly")
        dirty = [e[3:] for e in self._git("status", "--porcelain=v1", "-z", "--untracked-files=no",
                                          "--no-renames").split("\0") if e]
        if dirty:
            raise UndoError(f"the tree is not clean ({', '.join(sorted(dirty))}); "
                            "commit or stash your changes first")
        in_the_way = [p for p in self._changed_paths(head, "D") if os.path.lexists(self.root / p)]
        if in_the_way:
            raise UndoError(f"untracked files would be overwritten: {', '.join(in_the_way)}")

    # -- git plumbing --------------------------------------------------------------------------

    def _commit_paths(self, paths: list[str], message: str) -> str:
        """Commit the work-tree content of exactly `paths` on top of HEAD, as the user.

        The tree is built in a temporary index from HEAD, so the user's index is only touched
        afterwards, and only at `paths`, to match the new commit (as `git commit --only` does).
        """
        head = self._head()
        with tempfile.TemporaryDirectory(prefix="v4-index-") as tmp:
            env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
            self._git("read-tree", *([head] if head else ["--empty"]), env=env)
            self._git("update-index", "--add", "--remove", "--", *paths, env=env)
            tree = self._git("write-tree", env=env).strip()
            listed = self._git("ls-files", "-s", "-z", "--", *paths, env=env)
        entries = [e for e in listed.split("\0") if e]
        if head and tree == self._git("rev-parse", f"{head}^{{tree}}").strip():
            raise WorkspaceError(f"nothing to commit in {', '.join(paths)}")
        sha = self._git("commit-tree", tree, *(["-p", head] if head else []), "-F", "-", stdin=message).strip()
        self._git("update-ref", "-m", f"commit: {message.splitlines()[0]}", "HEAD", sha, head or "")
        self._sync_index(paths, entries)
        return sha

    def _sync_index(self, paths: list[str], entries: list[str]) -> None:
        """Set the user's index entries for `paths` (only) to `entries` (`ls-files -s` lines)."""
        present = {e.split("\t", 1)[1] for e in entries}
        removed = [f"0 {_ZERO_OID}\t{p}" for p in paths if p not in present]
        self._git("update-index", "-z", "--index-info", stdin="".join(f"{e}\0" for e in entries + removed))

    def _changed_paths(self, commit: str, only: str = "ACDMRTUXB") -> list[str]:
        """Paths `commit` changed against its first parent; `only` filters by status (D: deleted)."""
        out = self._git("diff-tree", "-r", "--no-renames", "--name-only", "-z", f"--diff-filter={only}",
                        f"{commit}^", commit)
        return [p for p in out.split("\0") if p]

    def _unmerged(self, paths: list[str]) -> list[str]:
        out = self._git("ls-files", "-u", "-z", "--", *paths)
        return sorted({e.split("\t", 1)[1] for e in out.split("\0") if e})

    def _head(self) -> str | None:
        done = self._run("rev-parse", "--verify", "-q", "HEAD^{commit}")
        if done.returncode != 0:  # unborn branch: the repository has no commits yet
            return None
        return done.stdout.strip()

    def _git(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
        done = self._run(*args, env=env, stdin=stdin)
        if done.returncode != 0:
            raise WorkspaceError(f"git {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def _run(self, *args: str, env: dict[str, str] | None = None,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run git with literal pathspecs and no optional index writes (status must not touch it)."""
        full_env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", **(env or {})}
        return subprocess.run(["git", "--literal-pathspecs", "-C", str(self.root), *args],
                              input=stdin, capture_output=True, text=True, env=full_env,
                              encoding="utf-8", errors="surrogateescape")

    # -- files and state -----------------------------------------------------------------------

    def _rels(self, paths: Iterable[str]) -> list[str]:
        return list(dict.fromkeys(self._rel(p) for p in paths))

    def _rel(self, path: str | os.PathLike[str]) -> str:
        """Repo-relative posix path; paths outside the work tree, or in .git/.v4, are refused."""
        absolute = Path(os.path.normpath(self.root / path))
        if not absolute.is_relative_to(self.root):  # maybe reached through a symlink
            absolute = absolute.resolve()
        if not absolute.is_relative_to(self.root):
            raise WorkspaceError(f"{path} is outside the repository {self.root}")
        rel = absolute.relative_to(self.root).as_posix()
        if rel == "." or rel.split("/")[0] in {".git", STATE_DIR}:
            raise WorkspaceError(f"{path} is not a file v4 may edit")
        return rel

    def _read(self, rel: str) -> str | None:
        path = self.root / rel
        return path.read_bytes().decode("utf-8", "surrogateescape") if path.is_file() else None

    def _write(self, rel: str, content: str | None) -> None:
        path = self.root / rel
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode("utf-8", "surrogateescape"))

    def _is_own_change(self, rel: str, entry: dict | None) -> bool:
        """True when `rel` holds exactly what v4 last wrote there and has not committed."""
        return entry is not None and entry.get("after_sha256", "") == _sha256(self._read(rel))

    def _load_pending(self) -> dict[str, dict]:
        return self._load("pending.json", "files", {})

    def _save_pending(self, files: dict[str, dict]) -> None:
        self._save("pending.json", "files", files)

    def _load_commits(self) -> list[dict]:
        return self._load("commits.json", "commits", [])

    def _save_commits(self, commits: list[dict]) -> None:
        self._save("commits.json", "commits", commits)

    def _record_commit(self, sha: str, kind: str, paths: list[str]) -> None:
        subject = self._git("log", "-1", "--format=%s", sha).strip()
        entry = {"sha": sha, "kind": kind, "paths": sorted(paths), "subject": subject}
        self._save_commits([*self._load_commits(), entry])

    def _load(self, name: str, key: str, empty: dict | list):
        path = self.state_dir / name
        if not path.exists():
            return empty
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return data[key]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WorkspaceError(f"{path} is unreadable ({exc}); move it aside to start over") from None

    def _save(self, name: str, key: str, value: dict | list) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half a state file."""
        self.state_dir.mkdir(exist_ok=True)
        ignore = self.state_dir / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# v4's state: never committed\n*\n")
        path = self.state_dir / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": STATE_VERSION, key: value}, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)


# -- diffs ------------------------------------------------------------------------------------


def _file_diff(rel: str, before: str | None, after: str | None) -> tuple[FileDiff, dict[Opcode, int]]:
    """The diff of one file, and which hunk owns each changed opcode (for `_rebuild`).

    Added and deleted files are one hunk each: rejecting it deletes or restores the whole file.
    """
    old, new = _lines(before or ""), _lines(after or "")
    if before is None or after is None:
        status = "added" if before is None else "deleted"
        groups = [[("insert" if before is None else "delete", 0, len(old), 0, len(new))]]
    else:
        status = "modified"
        matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
        groups = list(matcher.get_grouped_opcodes(CONTEXT_LINES))
    hunks, owner = [], {}
    for index, group in enumerate(groups):
        hunks.append(_hunk(rel, group, old, new))
        owner.update({op: index for op in group if op[0] != "equal"})
    return FileDiff(rel, status, tuple(hunks)), owner


def _hunk(rel: str, group: list[Opcode], old: list[str], new: list[str]) -> Hunk:
    i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
    header = f"@@ -{_range(i1, i2)} +{_range(j1, j2)} @@"
    lines: list[str] = []
    for tag, a1, a2, b1, b2 in group:
        if tag == "equal":
            lines += _show(" ", old[a1:a2])
            continue
        lines += _show("-", old[a1:a2]) + _show("+", new[b1:b2])
    digest = hashlib.sha1("\n".join([rel, header, *lines]).encode("utf-8", "surrogateescape")).hexdigest()
    return Hunk(f"{rel}#{digest[:8]}", rel, header, tuple(lines))


def _rebuild(diff: FileDiff, owner: dict[Opcode, int], rejected: set[int],
             before: str | None, after: str | None) -> str | None:
    """`after` with the rejected hunks' changes replaced by what `before` held there."""
    if diff.status != "modified":
        return before if rejected else after
    old, new = _lines(before or ""), _lines(after or "")
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    parts: list[str] = []
    for op in matcher.get_opcodes():
        tag, a1, a2, b1, b2 = op
        parts += old[a1:a2] if tag != "equal" and owner[op] in rejected else new[b1:b2]
    return "".join(parts)


def _lines(text: str) -> list[str]:
    """Split on "\\n" only (as git does), keeping the newlines so joining restores the text."""
    pieces = text.split("\n")
    return [p + "\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


def _show(prefix: str, lines: list[str]) -> list[str]:
    shown = []
    for line in lines:
        shown.append(prefix + line.removesuffix("\n"))
        if not line.endswith("\n"):
            shown.append(_NO_NEWLINE)
    return shown


def _range(start: int, stop: int) -> str:
    """A unified-diff range: 1-based start, and the length unless it is 1."""
    length = stop - start
    if length == 1:
        return str(start + 1)
    return f"{start if length == 0 else start + 1},{length}"


def _sha256(content: str | None) -> str | None:
    if content is None:
        return None
    return hashlib.sha256(content.encode("utf-8", "surrogateescape")).hexdigest()


# -- messages ---------------------------------------------------------------------------------


def _names(paths: list[str], limit: int = 3) -> str:
    if len(paths) <= limit:
        return ", ".join(paths)
    return f"{', '.join(paths[:limit])} and {len(paths) - limit} more"


def _save_message(paths: list[str]) -> str:
    subject = f"v4: save your uncommitted changes to {_names(paths)} before editing"
    return subject + ("\n\n" + "\n".join(paths) if len(paths) > 3 else "") + "\n"


def _summary(diffs: list[FileDiff]) -> str:
    """A subject like "v4: edit a.py, add b.py"; with many files, counts and a body listing them."""
    verbs = {"modified": "edit", "added": "add", "deleted": "delete"}
    groups = {v: [d.path for d in diffs if d.status == s] for s, v in verbs.items()}
    if len(diffs) <= 3:
        parts = [f"{verb} {', '.join(paths)}" for verb, paths in groups.items() if paths]
        return "v4: " + "; ".join(parts)
    parts = [f"{verb} {len(paths)} file{'s' * (len(paths) != 1)}" for verb, paths in groups.items() if paths]
    return "v4: " + ", ".join(parts) + "\n\n" + "\n".join(d.path for d in diffs)


def _with_trailer(message: str) -> str:
    body = message.rstrip()
    if body.endswith(TRAILER):
        body = body[: -len(TRAILER)].rstrip()
    return f"{body}\n\n{TRAILER}\n"
