"""AI comments, in Aider's syntax: instructions the user writes as comments in their own code.

A comment (`#`, `//`, `--` or `;`) that starts or ends with "AI" is an AI comment, in any case. One
ending in `AI!` (or starting with `AI!`) asks for the change it describes; `AI?` asks a question;
a plain `AI` adds context to the others. When a changed file holds an `AI!` or `AI?` comment, every
AI comment of the files seen with them is sent to the agent, each with the code around it, and for
`AI!` the agent removes the comments as part of its edits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..prompts import ASK_PROMPT, CHANGE_PROMPT

# Aider's pattern (aider/watch.py), with its `;` for Lisp-family comments.
AI_COMMENT = re.compile(r"(?:#|//|--|;+) *(?:ai\b.*|.*\bai[?!]?) *$", re.IGNORECASE)
CONTEXT_LINES = 3  # code lines shown on each side of a comment
MAX_FILE_BYTES = 1_000_000  # the index's default limit: larger files are not read for comments
MARK, PLAIN, GAP = "█", "│", "⋮"



@dataclass(frozen=True, slots=True)
class AIComment:
    """One AI comment: where it is and what it says."""

    path: str
    line: int  # 1-based
    text: str  # the comment from its marker (`#`, `//`, ...) to the end of the line
    action: str | None  # "!" (change), "?" (question) or None (context)


@dataclass(frozen=True, slots=True)
class AIRequest:
    """What the agent is asked after a change: the action and every AI comment, with the files' code."""

    action: str  # "!" or "?"
    comments: tuple[AIComment, ...]  # in path, then line order
    texts: dict[str, str]  # path -> the file's text, as read for the comments

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(sorted(self.texts))

    @property
    def kind(self) -> str:
        return f"AI{self.action}"

    def instruction(self) -> str:
        """The message to the agent: what to do, then each file's comments in their code."""
        parts = [CHANGE_PROMPT if self.action == "!" else ASK_PROMPT]
        for path in self.files:
            lines = [c.line for c in self.comments if c.path == path]
            parts.append(f"{path}:\n{excerpt(self.texts[path], lines)}")
        return "\n\n".join(parts) + "\n"


def find_ai_comments(path: str, text: str) -> list[AIComment]:
    """Every AI comment of `text`, in line order (Aider's rules for what counts and what it asks)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        match = AI_COMMENT.search(line)
        if match is None or not match.group(0).strip():
            continue
        comment = match.group(0).strip()
        words = comment.lower().lstrip("/#-;").strip()
        action = "!" if words.startswith("ai!") or words.endswith("ai!") else \
            "?" if words.startswith("ai?") or words.endswith("ai?") else None
        found.append(AIComment(path, number, comment, action))
    return found


def excerpt(text: str, lines: Iterable[int], context: int = CONTEXT_LINES) -> str:
    """The lines of interest (1-based) marked with █, `context` lines around each, and the lines
    that open the blocks they sit in (a smaller indent above them: the `def`, the `class`), with ⋮
    where lines are left out."""
    source = text.splitlines()
    marked = {n - 1 for n in lines if 0 < n <= len(source)}
    shown = set()
    for index in marked:
        shown.update(range(max(0, index - context), min(len(source), index + context + 1)))
        shown.update(_enclosing(source, index))
    out, previous = [], -1
    for index in sorted(shown):
        if index > previous + 1:
            out.append(GAP)
        out.append(f"{MARK if index in marked else PLAIN}{source[index]}")
        previous = index
    if previous < len(source) - 1:
        out.append(GAP)
    return "\n".join(out)


def _enclosing(source: list[str], index: int) -> list[int]:
    """Indices of the lines above `index` that open its enclosing blocks (each less indented)."""
    found, indent = [], _indent(source[index])
    for above in range(index - 1, -1, -1):
        line = source[above]
        if not line.strip():
            continue
        if _indent(line) < indent:
            found.append(above)
            indent = _indent(line)
            if indent == 0:
                break
    return found


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip()) if line.strip() else 1 << 30


class AICommentTracker:
    """Follows the files that hold AI comments across changes and says when one asks for a run.

    A change asks for a run when a file the user changed holds an `AI!` or `AI?` comment; then the
    comments of every file seen with AI comments (that still has them) go to the agent, as Aider
    does. The caller names the files the agent itself just wrote (`own`): they are not read as
    requests, so a comment the agent failed to remove cannot start another run.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files: set[str] = set()

    def observe(self, changed: Iterable[str], own: Iterable[str] = ()) -> AIRequest | None:
        """Look at the changed paths; an AIRequest when they ask for a run."""
        action, own = None, set(own)
        for path in sorted(set(changed)):
            text = self._read(path)
            comments = find_ai_comments(path, text) if text is not None else []
            if not comments:
                self.files.discard(path)
                continue
            self.files.add(path)
            if path in own:
                continue
            actions = {c.action for c in comments}
            if "!" in actions:
                action = "!"
            elif "?" in actions and action is None:
                action = "?"
        return None if action is None else self.request(action)

    def request(self, action: str) -> AIRequest | None:
        """Every AI comment of the tracked files, for `action`."""
        texts, comments = {}, []
        for path in sorted(self.files):
            text = self._read(path)
            found = find_ai_comments(path, text) if text is not None else []
            if found:
                texts[path] = text
                comments += found
        return AIRequest(action, tuple(comments), texts) if comments else None

    def _read(self, path: str) -> str | None:
        file = self.root / path
        try:
            if not file.is_file() or file.is_symlink() or file.stat().st_size > MAX_FILE_BYTES:
                return None
            return file.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None
