"""Diffs of v4's changes: per-file hunks for review, and undoing chosen hunks without touching
the user's own later edits (a three-way merge through `git merge-file`)."""

from __future__ import annotations

import difflib
import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CONTEXT_LINES = 3
_NO_NEWLINE = "\\ No newline at end of file"


@dataclass(frozen=True)
class Hunk:
    """One hunk of a pending change; `id` is derived from its content so stale ids never match."""

    id: str
    path: str
    header: str
    lines: tuple[str, ...]  # " context", "-removed", "+added" (and git's "\\ No newline" marker)


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


def file_diff(rel: str, before: str | None, after: str | None) -> tuple[FileDiff, dict[Opcode, int]]:
    """The diff of one file, and which hunk owns each changed opcode (for `rebuild`).

    Each change is a hunk of its own, however close the next one is (`split_changes`), so every
    change can be kept or rejected alone. Added and deleted files are one hunk each: rejecting it
    deletes or restores the whole file.
    """
    old, new = _lines(before or ""), _lines(after or "")
    if before is None or after is None:
        status = "added" if before is None else "deleted"
        groups = [[("insert" if before is None else "delete", 0, len(old), 0, len(new))]]
    else:
        status = "modified"
        matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
        groups = split_changes(matcher.get_opcodes(), CONTEXT_LINES)
    hunks, owner = [], {}
    for index, group in enumerate(groups):
        hunks.append(_hunk(rel, group, old, new))
        owner.update({op: index for op in group if op[0] != "equal"})
    ids = [h.id for h in hunks]
    assert len(set(ids)) == len(ids), f"hunk ids of {rel} collide: {ids}"  # headers differ by position
    return FileDiff(rel, status, tuple(hunks)), owner


def split_changes(opcodes: list[Opcode], context: int) -> list[list[Opcode]]:
    """One group per change, with up to `context` unchanged lines on each side: what `git add -p`'s
    split gives, so two edits a few lines apart are two hunks (neighbours share context lines).
    difflib's opcodes alternate between "equal" and a change, so a change's neighbours are equal."""
    groups = []
    for k, op in enumerate(opcodes):
        if op[0] == "equal":
            continue
        group = [op]
        if k > 0:
            _, a1, a2, b1, b2 = opcodes[k - 1]
            n = min(context, a2 - a1)
            group.insert(0, ("equal", a2 - n, a2, b2 - n, b2))
        if k + 1 < len(opcodes):
            _, a1, a2, b1, b2 = opcodes[k + 1]
            n = min(context, a2 - a1)
            group.append(("equal", a1, a1 + n, b1, b1 + n))
        groups.append([g for g in group if g[0] != "equal" or g[1] < g[2]])
    return groups


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


def rebuild(diff: FileDiff, owner: dict[Opcode, int], rejected: set[int],
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


def merge_three(current: str, base: str, other: str) -> str | None:
    """`current` with the change from `base` to `other` merged in (`git merge-file`); None when the two
    touch the same lines (a conflict), so the caller refuses rather than guesses."""
    with tempfile.TemporaryDirectory(prefix="v4-merge-") as tmp:
        names = []
        for name, text in (("current", current), ("base", base), ("other", other)):
            path = Path(tmp) / name
            path.write_bytes(text.encode("utf-8", "surrogateescape"))
            names.append(str(path))
        done = subprocess.run(["git", "merge-file", "-p", "--quiet", *names], capture_output=True)
    if done.returncode != 0:
        return None
    return done.stdout.decode("utf-8", "surrogateescape")
