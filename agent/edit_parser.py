"""Edit blocks read out of a model response: markers, sections and the path each block belongs to.

Markers count only in their structural place. The `=======` divider and the `>>>>>>> REPLACE`
tail must sit at the head's indentation; a `=======` inside a git conflict section carried in the
body (`<<<<<<< HEAD` ... `>>>>>>> branch`) is content. Where a body still holds several lines
that could be the divider (an RST underline, a banner in a docstring), the block keeps every
reading and planning takes the one the file supports (see `edits.plan_changes`). A divider of the
head's own length is preferred, so a model can always write `<<<<<<<<< SEARCH` / `=========` to
be unambiguous.

A block needs its own path: on the line before its fence, in the fence info, or on the first line
inside the fence. Only a block that follows the previous one with nothing but blank lines between
(several blocks in one fence) shares that block's path.
"""

from __future__ import annotations

import posixpath
import re

from v4.agent.edit_blocks import EditBlock, EditError, Kind

_HEAD = re.compile(r"^(\s*)(<{5,9}) ?(?:SEARCH|ORIGINAL)>?\s*$")
_DIVIDER = re.compile(r"^(={5,9})\s*$")
_TAIL = re.compile(r"^>{5,9} ?(?:REPLACE|UPDATED)\s*$")
_DELETE = re.compile(r"^<{5,9} ?DELETE\b:?\s*(.*?)\s*$")
_CONFLICT_OPEN = re.compile(r"^<{7}(?: .*)?$")
_CONFLICT_CLOSE = re.compile(r"^>{7}(?: .*)?$")
_FENCE = re.compile(r"^\s*(?:`{3,}|~{3,})\s*(.*?)\s*$")
_PATH_CHARS = re.compile(r"^[\w./\\~@+=,-]+$")
_BARE_NAMES = {"Makefile", "Dockerfile", "Containerfile", "Justfile", "Procfile", "Gemfile", "Rakefile",
               "Vagrantfile", "Jenkinsfile", "LICENSE", "CODEOWNERS", "BUILD", "WORKSPACE"}
_PATH_LOOKBACK = 4  # lines above a marker searched for its path (path, blank, fence, ...)


def parse_edits(response: str) -> list[EditBlock]:
    """Every edit block in `response`, in order; EditError for the first malformed or cut-off block."""
    lines = response.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[EditBlock] = []
    floor = 0  # a block's path is never looked for above the end of the block before it
    last_path: str | None = None
    i = 0
    while i < len(lines):
        marker = lines[i].strip()
        if delete := _DELETE.match(marker):
            named = delete.group(1)
            path = _clean_path(named) if named else _find_path(lines, floor, i)
            blocks.append(_delete_block(path, len(blocks)))
            i += 1
        elif head := _HEAD.match(lines[i]):
            path = _find_path(lines, floor, i)
            if path is None and last_path is not None and not any(line.strip() for line in lines[floor:i]):
                path = last_path  # the next block in the same fence
            if path is None:
                raise EditError(_missing_path_message(len(blocks)), len(blocks))
            readings, i = _read_block(lines, i, head.group(1), len(head.group(2)), len(blocks), path)
            blocks.append(_replace_block(path, readings, len(blocks)))
        elif _TAIL.match(marker):
            raise EditError(f"Found `>>>>>>> REPLACE` on line {i + 1} with no `<<<<<<< SEARCH` before it. "
                            "Each edit block needs the three marker lines, in order: `<<<<<<< SEARCH`, "
                            "`=======`, `>>>>>>> REPLACE`.", len(blocks))
        else:
            i += 1
            continue
        floor = i
        last_path = blocks[-1].path
    return blocks


def reading_kind(search: str) -> Kind:
    """An empty SEARCH creates a file; anything else replaces lines in one."""
    return "replace" if search.strip() else "create"


def _replace_block(path: str, readings: list[tuple[str, str]], index: int) -> EditBlock:
    search, replace = readings[0]
    kind = reading_kind(search)
    extra = tuple(readings) if len(readings) > 1 else ()
    return EditBlock(path, search if kind == "replace" else "", replace, kind, index, extra)


def _delete_block(path: str | None, index: int) -> EditBlock:
    if path is None:
        raise EditError(f"Edit block {index + 1} (DELETE) names no file path. Write the path on the marker "
                        "line itself: `<<<<<<< DELETE path/to/file`.", index)
    return EditBlock(path, "", "", "delete", index)


def _read_block(lines: list[str], head: int, indent: str, width: int, index: int,
                path: str) -> tuple[list[tuple[str, str]], int]:
    """Every (SEARCH, REPLACE) reading of the block whose head is `lines[head]`, and the line after it."""
    dividers: list[int] = []
    for i in range(head + 1, len(lines)):
        line = lines[i]
        if not line.startswith(indent):
            continue
        marker = line[len(indent):]
        if _TAIL.match(marker):
            if not dividers:
                raise _misplaced(i, marker, "=======", index, path)
            body = lines[head + 1:i]
            cuts = _divider_choice([d - head - 1 for d in dividers], body, width, indent)
            return [(_text(body[:cut]), _text(body[cut + 1:])) for cut in cuts], i + 1
        if _HEAD.match(marker) and not marker[0].isspace():
            raise _misplaced(i, marker, ">>>>>>> REPLACE" if dividers else "=======", index, path)
        if _DIVIDER.match(marker):
            dividers.append(i)
    expected = ">>>>>>> REPLACE" if dividers else "======="
    raise EditError(f"Edit block {index + 1} ({path}) is not closed: the response ended before its "
                    f"`{expected}` line, so it was probably cut off. Nothing was applied; send this block "
                    "(and any after it) again in full.", index, path)


def _divider_choice(cuts: list[int], body: list[str], width: int, indent: str) -> list[int]:
    """The body positions that may be the divider: not inside a carried conflict section, and of the
    head's own length where any is."""
    free = [cut for cut in cuts if not _in_conflict(body, cut, indent)] or cuts
    same = [cut for cut in free if len(body[cut].strip()) == width]
    return same or free


def _in_conflict(body: list[str], cut: int, indent: str) -> bool:
    """True when `body[cut]` lies between a conflict's `<<<<<<< ours` and its `>>>>>>> theirs`."""
    def kind(line: str) -> str:
        bare = line[len(indent):] if line.startswith(indent) else line
        if _CONFLICT_OPEN.match(bare) and not _HEAD.match(bare):
            return "open"
        if _CONFLICT_CLOSE.match(bare) and not _TAIL.match(bare):
            return "close"
        return ""
    before = next((kind(line) for line in reversed(body[:cut]) if kind(line)), "")
    after = next((kind(line) for line in body[cut + 1:] if kind(line)), "")
    return before == "open" and after == "close"


def _misplaced(i: int, marker: str, expected: str, index: int, path: str) -> EditError:
    return EditError(f"Edit block {index + 1} ({path}) is malformed: line {i + 1} is `{marker.strip()}` "
                     f"where `{expected}` was expected. Each block is `<<<<<<< SEARCH`, the old lines, "
                     "`=======`, the new lines, `>>>>>>> REPLACE`.", index, path)


def _text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _missing_path_message(index: int) -> str:
    return (f"Edit block {index + 1} has no file path of its own. Put the path, relative to the repository "
            "root, alone on the line before each block's opening fence (only blocks that follow each other "
            "inside one fence share a path):\n\npath/to/file.py\n```python\n<<<<<<< SEARCH")


def _find_path(lines: list[str], floor: int, marker: int) -> str | None:
    """The path written just above the marker at `lines[marker]`: in a fence's info or on its own line."""
    for j in range(marker - 1, max(floor, marker - _PATH_LOOKBACK) - 1, -1):
        line = lines[j]
        fence = _FENCE.match(line)
        if fence:
            if path := _path_in_fence_info(fence.group(1)):
                return path
        elif line.strip():
            return _path_on_line(line.strip())  # the first text line decides: a path or prose
    return None


def _path_in_fence_info(info: str) -> str | None:
    """`python app/x.py`, `app/x.py`, `python:app/x.py`, `python title="app/x.py"`."""
    for token in info.split():
        token = token.split("=", 1)[-1]
        token = token.split(":", 1)[-1] if ":" in token else token
        if path := _clean_path(token):
            return path
    return None


def _path_on_line(line: str) -> str | None:
    """A line that is just a path (decorated or not), or prose ending in ':' naming one path."""
    bare = re.sub(r"^(?:#+\s*|[-*+]\s+|\d+[.)]\s+)", "", line)
    bare = re.sub(r"^(?:file(?:name)?|path)\s*:\s*", "", bare, flags=re.IGNORECASE)
    if path := _clean_path(bare):
        return path
    if line.rstrip("*").endswith(":"):  # "Update `app/x.py`:"
        named = {p for token in re.findall(r"`([^`]+)`|\*\*([^*]+)\*\*", line)
                 for p in [_clean_path(token[0] or token[1])] if p}
        if len(named) == 1:
            return named.pop()
    return None


def _clean_path(text: str) -> str | None:
    """`text` without markdown decoration, normalised, if it looks like a file path; else None."""
    text = re.sub(r"\s+\((?:new|new file|created?|deleted?)\):?$", "", text.strip(), flags=re.IGNORECASE)
    previous = None
    while previous != text:
        previous = text
        text = text.strip().rstrip(":").strip("*`'\"")
    text = text.replace("\\_", "_")
    if not _looks_like_path(text):
        return None
    return _normalise(text)


def _looks_like_path(text: str) -> bool:
    if not text or len(text) > 400 or not _PATH_CHARS.match(text) or set(text) <= {"."}:
        return False
    if text.endswith(("/", "\\", ".")):
        return False
    name = re.split(r"[/\\]", text)[-1]
    return "/" in text or "\\" in text or bool(re.search(r"\.\w+$", name)) or name in _BARE_NAMES


def _normalise(path: str) -> str:
    """One spelling per file, so `./a.py` and `a.py` share their blocks; `..` that escapes is kept."""
    return posixpath.normpath(path.replace("\\", "/"))
