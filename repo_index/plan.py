"""The ContextPlan: the repository as ordered segments, each with its text, token ids and hash.

A segment is a header line naming the file (the `==> path <==` of `head`/`tail`, which models know),
then the file's text or its outline. Token counts are of the whole rendered segment; the prompt is the
concatenation of the segments' token ids, so a segment boundary is a place a prefix state can be kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .budget import FULL, OMITTED, OUTLINE
from .files import Skipped

ELISION = "⋮"


@dataclass(frozen=True, slots=True)
class Segment:
    """One file of the plan, in context order; `token_ids` is empty when the file is omitted."""

    path: str
    language: str
    mode: str  # "full" | "outline" | "omitted"
    sha256: str  # of the file's bytes
    text: str  # the rendered segment ("" when omitted)
    token_ids: tuple[int, ...]
    full_tokens: int | None  # what the full segment costs, if it was counted (see budget.choose_modes)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(slots=True)
class ContextPlan:
    """The repository as the model sees it: segments in dependency order, and what was left out."""

    root: str
    budget: int
    segments: list[Segment]
    skipped: list[Skipped]
    tokenizer: str
    elapsed_s: float = 0.0
    warnings: list[str] = field(default_factory=list)
    # files kept by --include-secrets although they look like credentials (path, what matched): issue 22
    secrets: list[Skipped] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(s.num_tokens for s in self.segments)

    @property
    def included(self) -> list[Segment]:
        """The segments that are in the context (full or outline), in order."""
        return [s for s in self.segments if s.mode != OMITTED]

    @property
    def secrets_sent(self) -> list[Skipped]:
        """The files that look like credentials and are in the context (only with --include-secrets)."""
        shown = {s.path for s in self.included}
        return [s for s in self.secrets if s.path in shown]

    def token_ids(self) -> list[int]:
        """The whole repository part of the prompt."""
        ids: list[int] = []
        for segment in self.segments:
            ids.extend(segment.token_ids)
        return ids

    def to_json(self) -> dict:
        """The `v4 index --json` document."""
        return {
            "root": self.root,
            "budget": self.budget,
            "total_tokens": self.total_tokens,
            "elapsed_s": round(self.elapsed_s, 4),
            "tokenizer": self.tokenizer,
            "files": [
                {"path": s.path, "language": s.language, "mode": s.mode, "tokens": s.num_tokens,
                 "full_tokens": s.full_tokens, "sha256": s.sha256}
                for s in self.segments
            ],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "warnings": list(self.warnings),
            "secrets_included": [{"path": s.path, "reason": s.reason} for s in self.secrets],
        }


def render_full(path: str, text: str) -> str:
    """A file's full segment: header line, then its text, ending in one blank line."""
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"==> {path} <==\n{body}\n"


def render_outline(path: str, text: str, ranges: tuple[tuple[int, int], ...]) -> str:
    """A file's outline segment: its signature lines, with an elision mark wherever lines are left out."""
    lines = text.splitlines()
    out = [f"==> {path} (outline) <=="]
    previous_end = -1
    for start, end in ranges:
        if start >= len(lines):
            break
        if start > previous_end + 1:
            out.append(ELISION)
        out.extend(lines[start : end + 1])
        previous_end = end
    if previous_end < len(lines) - 1:
        out.append(ELISION)
    return "\n".join(out) + "\n\n"


def markdown_outline(text: str) -> tuple[tuple[int, int], ...]:
    """Heading lines of a Markdown file (outside code fences): its outline."""
    ranges = []
    fenced = False
    for number, line in enumerate(text.splitlines()):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            ranges.append((number, number))
    return tuple(ranges)
