"""An answer as the chat draws it: prose, and edit blocks as diffs instead of raw markers.

The answer is split again on every streamed piece (answers are a few KB), so a block is drawn as
soon as its SEARCH marker arrives and becomes a proper diff when its REPLACE marker does. Finished
blocks are read by the agent's own parser (`parse_edits`), so the path and the sections shown are
the ones the agent applies; this module only finds where blocks start and end.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from v4.agent.edits import EditError, parse_edits

_HEAD = re.compile(r"^<{5,9} ?(?:SEARCH|ORIGINAL)>?$")
_DIVIDER = re.compile(r"^={5,9}$")
_TAIL = re.compile(r"^>{5,9} ?(?:REPLACE|UPDATED)$")
_DELETE = re.compile(r"^<{5,9} ?DELETE\b:?\s*(.*)$")
_FENCE = re.compile(r"^(?:`{3,}|~{3,})")
_DECORATION = " \t*`#:'\""
_PATH_LOOKBACK = 2  # prose lines above a block that the parser may read its path from
_CONTEXT = 3  # unchanged lines kept around each change in a diff


@dataclass(frozen=True, slots=True)
class Prose:
    """Text outside edit blocks, shown as Markdown."""

    text: str


@dataclass(frozen=True, slots=True)
class EditPart:
    """One edit block; `complete` once its closing marker arrived, `error` if the parser refused it."""

    path: str | None
    kind: str  # "replace" | "create" | "delete"
    search: str
    replace: str
    complete: bool
    error: str | None = None


Part = Prose | EditPart


def split_answer(text: str, final: bool = False) -> list[Part]:
    """The parts of `text` in order. While streaming (`final` False) a last, unfinished line that
    may become a marker or a fence is held back, so raw markers never flash up as prose."""
    lines = text.replace("\r\n", "\n").split("\n")
    if not final and lines and lines[-1].lstrip()[:1] in ("<", "=", ">", "`", "~"):
        lines[-1] = ""
    parts: list[Part] = []
    prose: list[str] = []
    last_path: str | None = None
    i = 0
    while i < len(lines):
        marker = lines[i].strip()
        if not (_HEAD.match(marker) or _DELETE.match(marker)):
            prose.append(lines[i])
            i += 1
            continue
        header = _take_header(prose)
        end, complete = _block_end(lines, i)
        part = _edit_part(prose[-_PATH_LOOKBACK:] + header + lines[i:end], complete, last_path)
        if header and header[-1].strip().startswith(("```", "~~~")) and end < len(lines) \
                and _FENCE.match(lines[end].strip()) and not lines[end].strip().lstrip("`~"):
            end += 1  # the fence closing the block
        _flush(prose, parts)
        parts.append(part)
        last_path = part.path or last_path
        i = end
    _flush(prose, parts)
    return parts


def diff_lines(part: EditPart) -> list[str]:
    """The block as diff lines (" ", "-", "+" and "⋯" between distant changes)."""
    old, new = part.search.splitlines(), part.replace.splitlines()
    if part.kind == "delete":
        return []
    if not part.complete or part.kind == "create":
        return [f"-{line}" for line in old] + [f"+{line}" for line in new]
    out: list[str] = []
    for group in difflib.SequenceMatcher(None, old, new, autojunk=False).get_grouped_opcodes(_CONTEXT):
        if out:
            out.append("⋯")
        for tag, a1, a2, b1, b2 in group:
            if tag == "equal":
                out += [f" {line}" for line in old[a1:a2]]
            else:
                out += [f"-{line}" for line in old[a1:a2]] + [f"+{line}" for line in new[b1:b2]]
    return out


def _take_header(prose: list[str]) -> list[str]:
    """Pop the fence opener and the path line just above a marker off `prose`; return them."""
    header: list[str] = []
    if prose and _FENCE.match(prose[-1].strip()):
        header.insert(0, prose.pop())
    while prose and not prose[-1].strip() and header:
        prose.pop()
    if prose and _looks_like_path(prose[-1]):
        header.insert(0, prose.pop())
    return header


def _looks_like_path(line: str) -> bool:
    bare = re.sub(r"^(?:file(?:name)?|path)\s*:\s*", "", line.strip(_DECORATION), flags=re.IGNORECASE)
    return bool(bare) and len(bare) < 300 and not any(c.isspace() for c in bare) and ("." in bare or "/" in bare)


def _block_end(lines: list[str], start: int) -> tuple[int, bool]:
    """The index after the block starting at `lines[start]`, and whether the block is closed."""
    if _DELETE.match(lines[start].strip()):
        return start + 1, start + 1 < len(lines)
    for j in range(start + 1, len(lines)):
        if _TAIL.match(lines[j].strip()):
            return j + 1, True
    return len(lines), False


def _edit_part(block: list[str], complete: bool, last_path: str | None) -> EditPart:
    """Parse a finished block with the agent's parser; sketch an unfinished one."""
    if complete:
        error = None
        for text in ("\n".join(block), f"{last_path}\n" + "\n".join(block) if last_path else None):
            if text is None:
                continue
            try:
                edit = parse_edits(text)[0]
            except (EditError, IndexError) as exc:
                error = error or str(exc) or "not an edit block"
                continue
            return EditPart(edit.path, edit.kind, edit.search, edit.replace, True)
        return EditPart(None, "replace", "", "", True, error)
    head = next(k for k, line in enumerate(block) if _HEAD.match(line.strip()) or _DELETE.match(line.strip()))
    path = next((line.strip(_DECORATION) for line in block[:head] if _looks_like_path(line)), last_path)
    body = block[head + 1:]
    divider = next((k for k, line in enumerate(body) if _DIVIDER.match(line.strip())), len(body))
    search, replace = "\n".join(body[:divider]), "\n".join(body[divider + 1:])
    return EditPart(path, "replace" if search.strip() else "create", search, replace, False)


def _flush(prose: list[str], parts: list[Part]) -> None:
    text = "\n".join(prose).strip("\n")
    if text.strip():
        parts.append(Prose(text))
    prose.clear()
