"""Files attached to a request in full, after the repository prefix, instead of re-planning it.

The repository part of the system message is the cached prefix (the prefix-state store keeps it
across sessions), so it stays as it was planned while the conversation goes on. What the model
needs beyond it goes into the conversation, at the head of the request:
- files the request names (a repository path, or a file name only one indexed file has) that the
  prefix does not hold in full as they are now (outlined, omitted, or changed since);
- files with uncommitted changes (the user's, or v4's pending edits) whose content differs from what
  the prefix shows;
and `read_file`'s results are in the conversation already (tool results), so they are only recorded.

Each file is attached once per content: a later request attaches it again only when it changed.
Files are read under read_file's rules (`tools.read_repository_file`: nothing ignored, binary or
credential-looking), and the attachments of one request stay under a token cap; what does not fit
is named, so the model can read it with `read_file`. `report` lists every attachment of the
conversation, for the plan's report (`v4 refactor --json`, the TUI).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .tools import MAX_READ_BYTES, read_repository_file
from .workspace import Workspace, WorkspaceError

NAMED = "named in the request"
UNCOMMITTED = "uncommitted changes"
READ = "read with read_file"
DEFAULT_MAX_TOKENS = 8_192  # per request, unless the session's room says otherwise
MAX_UNCOMMITTED = 40  # changed files considered per request (a tree with thousands is not sent whole)
_WORD = re.compile(r"[\w./@+-]+")  # quotes, brackets and commas end a word
Held = Callable[[str, str], bool]  # (path, sha256 of its content) -> the prefix holds exactly that in full
Counter = Callable[[str], int | None]


@dataclass(frozen=True, slots=True)
class Attachment:
    """One file put in the conversation in full (or named as too large for it)."""

    path: str
    reason: str  # NAMED, UNCOMMITTED or READ
    tokens: int
    turn: int  # the turn (0-based) whose request carried it
    attached: bool = True  # False: over the cap, only named

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "reason": self.reason, "tokens": self.tokens, "turn": self.turn,
                "attached": self.attached}


@dataclass(slots=True)
class Attachments:
    """What a conversation was shown beyond the repository prefix; see the module docstring."""

    workspace: Workspace
    held: Held = lambda _path, _sha: False
    known: Callable[[], Sequence[str]] = tuple  # the indexed paths (for bare file names)
    count_tokens: Counter = lambda _text: None
    max_tokens: int = DEFAULT_MAX_TOKENS
    include_secrets: bool = False
    report: list[Attachment] = field(default_factory=list)
    _sent: dict[str, str] = field(default_factory=dict)  # path -> sha256 of the content last shown

    def for_request(self, instruction: str, turn: int, named: Iterable[str] = ()) -> str:
        """The attachment block for the request `instruction` of turn `turn` ("" when nothing is to
        be attached); `named`: paths the front end names for it (--files, an AI comment's file)."""
        wanted: dict[str, str] = {}
        for path in [*named, *self.named_paths(instruction)]:
            wanted.setdefault(path, NAMED)
        for path in self._uncommitted():
            wanted.setdefault(path, UNCOMMITTED)
        parts: list[str] = []
        left = self.max_tokens
        for path, reason in wanted.items():
            read = read_repository_file(self.workspace, path, MAX_READ_BYTES, self.include_secrets)
            if read.text is None:
                continue  # deleted, binary, ignored or credential-looking: not shown, as read_file would not
            sha = hashlib.sha256(read.text.encode("utf-8", "surrogateescape")).hexdigest()
            if self._sent.get(read.rel) == sha or (not read.cut and self.held(read.rel, sha)):
                continue
            block = f"==> {read.rel} <== ({reason})\n{read.text}" + ("" if read.text.endswith("\n") else "\n")
            tokens = self.count_tokens(block) or len(block) // 4 + 1
            if tokens > left:
                self.report.append(Attachment(read.rel, reason, tokens, turn, attached=False))
                parts.append(f"==> {read.rel} <== ({reason}; {tokens:,} tokens, over what this request may "
                             "attach: read it with read_file if you need it)\n")
                continue
            left -= tokens
            self._sent[read.rel] = sha
            self.report.append(Attachment(read.rel, reason, tokens, turn))
            parts.append(block)
        if not parts:
            return ""
        return ("# Attached files\n\nThe current contents of these files, in full. For these paths they replace "
                "what the repository context above shows.\n\n" + "\n".join(parts))

    def forget(self, report: bool = True) -> None:
        """A new or another conversation (/clear, a resume; `report` False: a compaction, whose summary
        replaced the turns that showed them): nothing has been shown in it yet."""
        self._sent.clear()
        if report:
            self.report.clear()

    def note_read(self, path: str, text: str, turn: int, tokens: int | None = None) -> None:
        """`read_file` showed `text` of `path`: it is in the conversation, so it is not attached again
        unless it changes (a cut read is recorded, not counted as the whole file)."""
        try:
            rel = self.workspace.rel(path)
        except WorkspaceError:
            return
        self._sent[rel] = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
        self.report.append(Attachment(rel, READ, tokens or len(text) // 4 + 1, turn))

    def named_paths(self, text: str) -> list[str]:
        """Files `text` names: a repository path that is a file, or a bare file name (`calc.py`) that
        exactly one indexed file has."""
        root = self.workspace.root
        by_name: dict[str, list[str]] = {}
        for known in self.known():
            by_name.setdefault(posixpath.basename(known), []).append(known)
        found: list[str] = []
        for word in _WORD.findall(text):
            word = word.rstrip(".,:;").removeprefix("./")
            if not word or word.startswith("/") or ".." in word.split("/"):
                continue
            if "/" in word and (root / word).is_file():
                path = word
            elif "/" not in word and "." in word and len(by_name.get(word, ())) == 1:
                path = by_name[word][0]
            else:
                continue
            if path not in found:
                found.append(path)
        return found

    def _uncommitted(self) -> list[str]:
        """Files with uncommitted changes (staged, unstaged, untracked; v4's pending edits too), the
        first MAX_UNCOMMITTED; none when git cannot say."""
        try:
            out = self.workspace.plumbing.git("status", "--porcelain=v1", "-z", "--untracked-files=all",
                                              "--no-renames")
        except WorkspaceError:
            return []
        paths = [entry[3:] for entry in out.split("\0") if len(entry) > 3 and entry[1] != "D" and entry[0] != "D"]
        return [p for p in paths if not p.startswith(".v4/")][:MAX_UNCOMMITTED]


def describe(entry: Mapping[str, object]) -> str:
    """One entry of a turn's `attached` report (`Attachment.to_json`) as the front ends show it."""
    return f"{entry['path']} ({entry['reason']}" + ("" if entry["attached"] else "; too large, named only") + ")"
