"""The git workspace: v4 edits files without ever losing the user's work, from any directory.

The workspace is the one owner of repository paths: it is rooted at the git top level whatever
directory v4 was started in, and every path (an edit's, a record's) goes through `apply.check_path`
and is named by its real file (an in-repository symlink is followed).

Promises, each kept by refusing rather than guessing:

* Files with uncommitted user changes are refused (`DirtyTreeError`), or, when the user asks for
  it, committed first in a commit of their own. Ignored files are never edited unless named.
* v4's change to each file is recorded (what it held before, what v4 wrote) before the first byte is
  written, so review tells v4's lines from the user's: rejecting a hunk undoes only v4's lines by a
  three-way merge with the file as it is now (`workspace_diff.merge_three`), keeping later user
  edits, and refuses when they overlap.
* `commit()` commits exactly what v4 wrote (its blobs, not whatever else the file holds now), never
  an ignored file, and its message names only changes the commit contains.
* `undo()` removes the last v4 commit only when that cannot lose anything or rewrite shared history.

Commits are built with plumbing over a temporary index (GIT_INDEX_FILE): the user's own index is
never rebuilt, stashed or reset, so whatever they staged for other files stays staged. Git hooks do
not run for these commits (as with `git commit --no-verify`). v4's records live in `<git dir>/v4/`
(`workspace_state.py`), locked against concurrent v4 processes; an apply interrupted by a crash is
rolled back when the next workspace opens (`apply.recover`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import git

from .apply import PathError, check_path, recover
from .edits import FileChange
from .workspace_git import GitPlumbing, WorkspaceError
from .workspace_diff import FileDiff, Hunk, file_diff, merge_three, rebuild
from .workspace_state import StateError, StateStore

__all__ = ["DirtyTreeError", "FileDiff", "Hunk", "TRAILER", "UndoError", "UndoPlan", "Workspace",
           "WorkspaceError", "repository_root"]

TRAILER = "Co-authored-by: v4 <v4@localhost>"


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


@dataclass(frozen=True, slots=True)
class UndoPlan:
    """What `undo()` would remove: HEAD, a v4 commit, and the paths it restores from its parent."""

    sha: str
    subject: str
    paths: tuple[str, ...]


def repository_root(path: str | os.PathLike[str]) -> Path:
    """The git top level above `path` (so v4 behaves the same from any subdirectory), or `path`
    itself, resolved, when it is not inside a git work tree."""
    try:
        top = git.Repo(path, search_parent_directories=True).working_tree_dir
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        top = None
    return Path(top if top is not None else path).resolve()


class Workspace:
    """A git work tree that v4 edits; see the module docstring for the guarantees."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        try:
            repo = git.Repo(root, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise WorkspaceError(f"{root} is not a git repository") from None
        if repo.working_tree_dir is None:
            raise WorkspaceError(f"{root} is a bare git repository (no work tree to edit)")
        self.root = Path(repo.working_tree_dir).resolve()
        self.plumbing = GitPlumbing(self.root)
        self.state = StateStore(Path(repo.git_dir).resolve() / "v4", self.rel)
        self.recovered: list[str] = []
        try:  # an apply killed midway is rolled back before anything else looks at the tree
            if self.state.directory.is_dir():
                with self.state.locked():
                    self.recovered = recover(self.root, self.state.directory)
        except (StateError, ValueError, OSError) as exc:
            raise WorkspaceError(f"an interrupted v4 apply could not be rolled back: {exc}") from None

    @property
    def journal_dir(self) -> Path:
        """Where `apply_changes` keeps its journal (inside the git directory)."""
        return self.state.directory

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive against other v4 processes on this repository (re-entrant in this one)."""
        try:
            with self.state.locked():
                yield
        except StateError as exc:
            raise WorkspaceError(str(exc)) from None

    # -- paths and reads -------------------------------------------------------------------------

    def rel(self, path: str | os.PathLike[str]) -> str:
        """The repository-relative path of the real file `path` names (an absolute path or one
        relative to the root); WorkspaceError for anything v4 may not touch."""
        text = os.fspath(path)
        if os.path.isabs(text):
            absolute = Path(os.path.normpath(text))
            if not absolute.is_relative_to(self.root):
                raise WorkspaceError(f"{text} is outside the repository {self.root}")
            text = absolute.relative_to(self.root).as_posix()
        try:
            target = check_path(self.root, text)
        except PathError as exc:
            raise WorkspaceError(str(exc)) from None
        if target == self.root:
            raise WorkspaceError(f"{text} is the repository itself, not a file")
        return target.relative_to(self.root).as_posix()

    def read(self, rel: str) -> str | None:
        """A file's exact content (None: absent); undecodable bytes kept as surrogates."""
        path = self.root / self.rel(rel)
        if path.is_dir():
            raise WorkspaceError(f"{rel} is a directory, not a file")
        return path.read_bytes().decode("utf-8", "surrogateescape") if path.is_file() else None

    def ignored(self, paths: Iterable[str]) -> list[str]:
        """The given paths git ignores and does not track (tracked files are never ignored)."""
        rels = self._rels(paths)
        if not rels:
            return []
        done = self.plumbing.run("check-ignore", "-z", "--stdin", stdin="".join(f"{p}\0" for p in rels),
                                 literal=False)  # --stdin paths are never pathspecs
        if done.returncode not in (0, 1):
            raise WorkspaceError(f"git check-ignore failed: {done.stderr.strip()}")
        return sorted(p for p in done.stdout.split("\0") if p)

    # -- before editing ------------------------------------------------------------------------

    def dirty_paths(self, paths: Iterable[str]) -> list[str]:
        """The given paths holding uncommitted user changes: staged, unstaged or untracked.

        Changes v4 itself made and has not committed yet are not the user's, so they do not count
        unless the user edited the file since. Ignored files do not count: git does not track them
        (they are refused separately, see `ignored`).
        """
        rels = self._rels(paths)
        if not rels:
            return []
        out = self.plumbing.git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames",
                        "--", *rels)
        reported = sorted({entry[3:] for entry in out.split("\0") if entry})
        own = self._pending()
        return [p for p in reported if not self._is_own_change(p, own.get(p))]

    def own_changes(self, paths: Iterable[str]) -> set[str]:
        """The given paths that hold exactly what v4 last wrote there (uncommitted): its own edits,
        not the user's (watch mode must not read them as new requests)."""
        own = self._pending()
        return {rel for rel in self._rels(paths) if self._is_own_change(rel, own.get(rel))}

    def prepare(self, paths: Iterable[str], dirty_commit: bool) -> str | None:
        """Make `paths` safe to edit; return the sha of the commit saving the user's changes, if any.

        Without `dirty_commit` nothing is touched: a dirty path raises `DirtyTreeError`.
        """
        with self.locked():
            dirty = self.dirty_paths(paths)
            if not dirty:
                return None
            if not dirty_commit:
                raise DirtyTreeError(dirty)
            unmerged = self.plumbing.unmerged(dirty)
            if unmerged:
                raise WorkspaceError(f"resolve the merge conflicts in {', '.join(unmerged)} first")
            sha = self.plumbing.commit_paths(dirty, lambda _changes: _save_message(dirty))
            self._record_commit(sha, "save", dirty)
            pending = self._pending()  # those files' changes, v4's included, are now committed
            self._save_pending({p: e for p, e in pending.items() if p not in dirty})
            return sha

    # -- the record of v4's changes -------------------------------------------------------------

    def record_changes(self, changes: Sequence[FileChange]) -> dict[str, dict]:
        """Record, before they are written, the changes v4 is about to make; returns the previous
        record, for `restore_record` should the write fail. A file changed twice keeps its first
        `before`, so review shows everything v4 did since the last commit."""
        with self.locked():
            pending = self._pending()
            previous = {rel: dict(entry) for rel, entry in pending.items()}
            for change in changes:
                rel = self.rel(change.path)
                entry = pending.setdefault(rel, {"before": change.before, "after": None,
                                                 "mode": self._mode(rel)})
                entry["after"] = change.after
                if entry["after"] == entry["before"]:
                    del pending[rel]
            self._save_pending(pending)
            return previous

    def restore_record(self, previous: dict[str, dict]) -> None:
        """Put back the record `record_changes` returned (the write it announced did not happen)."""
        with self.locked():
            self._save_pending(previous)

    # -- review --------------------------------------------------------------------------------

    def pending(self) -> list[FileDiff]:
        """v4's uncommitted changes, per file, split into hunks: what v4 wrote against what the file
        held before (the user's own later edits are not v4's and are not shown)."""
        return [diff for diff, _ in self._plans().values()]

    def review(self, decisions: Mapping[str, bool]) -> list[FileDiff]:
        """Undo the rejected hunks (False); accepted and undecided ones stay. Only v4's lines are
        undone: the file as it is now is merged with v4's change minus the rejected hunks, so the
        user's later edits stay, and a file whose later edits overlap a rejected hunk is refused.

        Every id must name a hunk of the current `pending()`, and every file must merge, before
        any file is written. Returns what is still pending.
        """
        with self.locked():
            pending = self._pending()
            plans = self._plans(pending)
            known = {h.id for diff, _ in plans.values() for h in diff.hunks}
            unknown = sorted(set(decisions) - known)
            if unknown:
                raise WorkspaceError(f"no pending hunk with id {', '.join(unknown)} (pending changed?)")
            writes: dict[str, tuple[str | None, str | None]] = {}
            for rel, (diff, owner) in plans.items():
                rejected = {i for i, h in enumerate(diff.hunks) if h.id in decisions and not decisions[h.id]}
                if rejected:
                    entry = pending[rel]
                    kept = rebuild(diff, owner, rejected, entry["before"], entry["after"])
                    writes[rel] = (kept, self._merged(rel, entry, kept))
            for rel, (kept, merged) in writes.items():
                self._write(rel, merged, pending[rel]["mode"])
                pending[rel]["after"] = kept
            self._save_pending({rel: e for rel, e in pending.items() if e["after"] != e["before"]})
        return self.pending()

    def _merged(self, rel: str, entry: dict, kept: str | None) -> str | None:
        """The file as it is now with v4's rejected lines undone; WorkspaceError if that would touch
        the user's own later edits."""
        current = self.read(rel)
        if current == entry["after"]:
            return kept
        if entry["after"] is None or kept is None or current is None:
            raise WorkspaceError(f"{rel} was changed after v4's edit (it was created, deleted or re-created "
                                 "since), so v4 will not undo its change there; do it yourself")
        merged = merge_three(current, entry["after"], kept)
        if merged is None:
            raise WorkspaceError(f"your later edits to {rel} touch the lines of the hunk to reject, so v4 "
                                 "will not undo it there (nothing was changed); edit the file yourself")
        return merged

    def _plans(self, pending: dict[str, dict] | None = None) -> dict[str, tuple[FileDiff, dict]]:
        """Each recorded file whose change is really there: v4's diff and the hunk owning each op."""
        pending = self._pending() if pending is None else pending
        plans = {}
        for rel, entry in sorted(pending.items()):
            if entry["after"] == entry["before"] or self.read(rel) == entry["before"]:
                continue  # not written (an apply rolled back) or undone by the user
            plans[rel] = file_diff(rel, entry["before"], entry["after"])
        return plans

    # -- commit ----------------------------------------------------------------------------------

    def uncommittable(self) -> list[str]:
        """Pending paths `commit()` leaves out: files git ignores (v4 never commits those)."""
        return self.ignored(self._plans())

    def commit(self, message: str | None = None) -> str:
        """Commit exactly what v4 wrote to the files with pending (accepted) changes; return the sha.

        The commit holds v4's recorded content (a file the user edited again keeps those edits as
        uncommitted changes), never an ignored file, and the default message names only what the
        commit changes. The message ends with the Co-authored-by trailer; the user's other staged
        changes stay staged.
        """
        with self.locked():
            pending = self._pending()
            plans = self._plans(pending)
            skipped = set(self.ignored(plans))
            paths = [rel for rel in plans if rel not in skipped]
            if not paths:
                reason = f" ({', '.join(sorted(skipped))} {'is' if len(skipped) == 1 else 'are'} ignored by git)" \
                    if skipped else ""
                raise WorkspaceError(f"no pending v4 changes to commit{reason}")
            contents = {rel: pending[rel]["after"] for rel in paths}
            sha = self.plumbing.commit_paths(
                paths, lambda changes: _with_trailer(message if message is not None else _summary(changes)), contents)
            committed = self.plumbing.changed_paths(sha)
            self._record_commit(sha, "agent", committed)
            self._save_pending({rel: e for rel, e in pending.items() if rel not in paths})
            return sha

    # -- undo ----------------------------------------------------------------------------------

    def undo_plan(self) -> UndoPlan:
        """What `undo()` would remove now (to show the user before they confirm); UndoError naming
        why it cannot, by the same checks."""
        with self.locked():
            head = self._undoable_head()
            subject = self.plumbing.git("log", "-1", "--format=%s", head).strip()
            return UndoPlan(head, subject, tuple(self.plumbing.changed_paths(head)))

    def undo(self, expected: str | None = None) -> str:
        """Remove the last v4 commit from the branch; return its sha (still in the reflog).

        Only when HEAD is a commit v4 made with `commit()`, it has a parent, no tag, no other branch,
        no remote-tracking ref and no mirror remote can have it, and the index and tracked files are
        clean (and, given `expected`, HEAD is still that commit: the one the user confirmed). Then
        the branch moves back to the parent with `update-ref` guarded by the old sha, and only the
        commit's own paths are restored from the parent in index and work tree.
        """
        with self.locked():
            head = self._undoable_head()
            if expected is not None and head != expected:
                raise UndoError(f"HEAD is now {head[:12]}, not {expected[:12]}, the commit you confirmed; "
                                "nothing was undone")
            parent = self.plumbing.git("rev-parse", f"{head}^").strip()
            paths = self.plumbing.changed_paths(head)
            self.plumbing.git("update-ref", "-m", "v4: undo", "HEAD", parent, head)
            if paths:
                self.plumbing.git("restore", f"--source={parent}", "--staged", "--worktree", "--", *paths)
            self._save_commits([c for c in self._commits() if c["sha"] != head])
            return head

    def _undoable_head(self) -> str:
        head = self.plumbing.head()
        if head is None:
            raise UndoError("the repository has no commits")
        self._check_undoable(head, next((c for c in self._commits() if c["sha"] == head), None))
        return head

    def _check_undoable(self, head: str, record: dict | None) -> None:
        """Raise `UndoError` naming the first reason HEAD cannot be undone safely."""
        title = f"HEAD {head[:12]} ({self.plumbing.git('log', '-1', '--format=%s', head).strip()})"
        revert = f"use `git revert {head[:12]}` to undo it with a new commit instead"
        if record is None:
            raise UndoError(f"{title} is not a commit v4 made; v4 only undoes its own last commit")
        if record["kind"] == "save":
            raise UndoError(f"{title} holds your own changes, saved before v4 edited; "
                            "undo it yourself if you mean to (git reset --soft HEAD~1)")
        if not self.plumbing.git("rev-list", "--parents", "-n", "1", head).split()[1:]:
            raise UndoError(f"{title} is the repository's first commit; v4 will not remove it")
        branch = self.plumbing.run("symbolic-ref", "-q", "HEAD").stdout.strip()
        holders = [ref for ref in self.plumbing.git("for-each-ref", "--contains", head, "--format=%(refname)").split()
                   if ref != branch]
        for prefix, says in (("refs/remotes/", "is already pushed"), ("refs/tags/", "is tagged"),
                             ("refs/heads/", "is also on branch"), ("refs/", "is also reachable from")):
            named = [ref.removeprefix(prefix) for ref in holders if ref.startswith(prefix)]
            if named:
                raise UndoError(f"{title} {says} ({', '.join(named[:5])}); {revert}")
        mirrors = [line.split()[0].split(".")[1] for line in self.plumbing.run(
            "config", "--get-regexp", r"^remote\..*\.mirror$").stdout.splitlines() if line.split()[-1] == "true"]
        if mirrors:
            raise UndoError(f"{title} may already be pushed to the mirror remote {', '.join(mirrors)}; {revert}")
        dirty = [e[3:] for e in self.plumbing.git("status", "--porcelain=v1", "-z", "--untracked-files=no",
                                          "--no-renames").split("\0") if e]
        if dirty:
            raise UndoError(f"the tree is not clean ({', '.join(sorted(dirty))}); "
                            "commit or stash your changes first")
        in_the_way = [p for p in self.plumbing.changed_paths(head, "D") if os.path.lexists(self.root / p)]
        if in_the_way:
            raise UndoError(f"untracked files would be overwritten: {', '.join(in_the_way)}")

    # -- files and records ----------------------------------------------------------------------

    def _rels(self, paths: Iterable[str]) -> list[str]:
        return list(dict.fromkeys(self.rel(p) for p in paths))

    def _mode(self, rel: str) -> int | None:
        """The file's permission bits (recorded before v4 writes, so a rejected deletion gets them back)."""
        path = self.root / rel
        return stat.S_IMODE(path.stat().st_mode) if path.is_file() else None

    def _write(self, rel: str, content: str | None, mode: int | None) -> None:
        """Write (None: delete) one file, with its recorded mode when it is created again."""
        path = self.root / self.rel(rel)
        if content is None:
            path.unlink(missing_ok=True)
            return
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("utf-8", "surrogateescape"))
        if not existed and mode is not None:
            os.chmod(path, mode)

    def _is_own_change(self, rel: str, entry: dict | None) -> bool:
        """True when `rel` holds exactly what v4 last wrote there and has not committed."""
        return entry is not None and entry["after"] != entry["before"] and self.read(rel) == entry["after"]

    def _pending(self) -> dict[str, dict]:
        try:
            return self.state.load_pending()
        except StateError as exc:
            raise WorkspaceError(str(exc)) from None

    def _save_pending(self, files: dict[str, dict]) -> None:
        try:
            self.state.save_pending(files)
        except (StateError, OSError) as exc:
            raise WorkspaceError(f"cannot write v4's record: {exc}") from None

    def _commits(self) -> list[dict]:
        try:
            return self.state.load_commits()
        except StateError as exc:
            raise WorkspaceError(str(exc)) from None

    def _save_commits(self, commits: list[dict]) -> None:
        try:
            self.state.save_commits(commits)
        except (StateError, OSError) as exc:
            raise WorkspaceError(f"cannot write v4's record: {exc}") from None

    def _record_commit(self, sha: str, kind: str, paths: list[str]) -> None:
        subject = self.plumbing.git("log", "-1", "--format=%s", sha).strip()
        entry = {"sha": sha, "kind": kind, "paths": sorted(paths), "subject": subject}
        self._save_commits([*self._commits(), entry])


# -- messages ---------------------------------------------------------------------------------


def _names(paths: list[str], limit: int = 3) -> str:
    if len(paths) <= limit:
        return ", ".join(paths)
    return f"{', '.join(paths[:limit])} and {len(paths) - limit} more"


def _save_message(paths: list[str]) -> str:
    subject = f"v4: save your uncommitted changes to {_names(paths)} before editing"
    return subject + ("\n\n" + "\n".join(paths) if len(paths) > 3 else "") + "\n"


def _summary(statuses: list[tuple[str, str]]) -> str:
    """A subject like "v4: edit a.py; add b.py" from the commit's own (status, path) changes; with
    many files, counts and a body listing them."""
    verbs = {"M": "edit", "A": "add", "D": "delete"}
    groups = {v: [path for status, path in statuses if status[:1] == s] for s, v in verbs.items()}
    if len(statuses) <= 3:
        parts = [f"{verb} {', '.join(paths)}" for verb, paths in groups.items() if paths]
        return "v4: " + "; ".join(parts)
    parts = [f"{verb} {len(paths)} file{'s' * (len(paths) != 1)}" for verb, paths in groups.items() if paths]
    return "v4: " + ", ".join(parts) + "\n\n" + "\n".join(path for _, path in statuses)


def _with_trailer(message: str) -> str:
    body = message.rstrip()
    if body.endswith(TRAILER):
        body = body[: -len(TRAILER)].rstrip()
    return f"{body}\n\n{TRAILER}\n"
