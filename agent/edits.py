"""The edit protocol: SEARCH/REPLACE blocks in a model response, planned against the files.

The format is Aider's "diff" edit format, which models already know. Three forms:

* replace -- the path alone on the line before the opening fence, then::

      <<<<<<< SEARCH
      lines copied from the file
      =======
      the lines that take their place
      >>>>>>> REPLACE

* create -- the same with an *empty* SEARCH section (Aider's convention); REPLACE is the whole new
  file. The file must not exist yet: an empty SEARCH never appends to or overwrites a file.
* delete -- one line, ``<<<<<<< DELETE path/to/file``, inside a fence or not. It has no sections,
  so it cannot be half-sent, and no SEARCH/REPLACE shape (e.g. an empty REPLACE) ever means delete.
  To rewrite a whole file, delete it and create it again in the same response.

Every edit lands exactly as the model meant it, or is refused with a message for the model; the
modules behind this one each answer one question:

* `edit_parser` -- where the blocks are, and which file each belongs to;
* `edit_match` -- where a SEARCH is in the file (exact, loose, elided; exactly one place);
* `edit_splice` -- which indentation frame REPLACE is written in, and the bytes of every line;
* `edit_syntax` -- whether the file still parses, and whether a `...` stays inside one unit;
* `edit_feedback` -- what to tell the model when a SEARCH is not found.

Matching runs on text with ``\\n`` newlines: a file written with CRLF throughout is matched with LF
and written back with CRLF (a UTF-8 BOM is kept the same way). A file that mixes newline styles is
matched as it is, its ``\\r`` ignored as trailing whitespace, and every line the edit leaves alone
keeps its bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from v4.agent.edit_blocks import BlockFailure, EditBlock, EditError, FileChange, Kind, indent_of, text_lines
from v4.agent.edit_feedback import ambiguous_message, not_found_message
from v4.agent.edit_match import Attempt, Match, attempts, find, retab
from v4.agent.edit_parser import parse_edits, reading_kind
from v4.agent.edit_splice import align, splice
from v4.agent.edit_syntax import FileSyntax, is_stub_body

if TYPE_CHECKING:
    from tree_sitter import Tree

__all__ = ["EditBlock", "EditError", "FileChange", "Kind", "parse_edits", "plan_changes"]

# A comment standing for code, or a bare `...`: never written literally unless it is real code.
_LAZY = re.compile(r"^\s*(?:(?:#|//|--|/\*|<!--)\s*\.\.\.|\.\.\.\s*$)")

@dataclass
class _FileState:
    """A file as the blocks see it: `text` has `\\n` newlines and no BOM; None while absent.

    `history` holds (block index, text after it) for each block applied, so a syntax error in the
    end result can be traced to the block that brought it in.
    """

    before: str | None
    syntax: FileSyntax
    text: str | None = None
    crlf: bool = False
    bom: bool = False
    error: str | None = None
    history: list[tuple[int, str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class _Outcome:
    """A reading that applied: the file's new text, and the first non-blank line after the match."""

    text: str | None
    following: str | None = None


def plan_changes(blocks: list[EditBlock], read: Callable[[str], str | None]) -> list[FileChange]:
    """The file changes `blocks` make, applied in order against what `read` returns (None: no file).

    Every block is checked; if any fails, one EditError lists them all. A file that parsed without
    errors before and has errors after fails the block that brought the error in. Files that end up
    unchanged are left out. `read` may raise OSError/ValueError (e.g. a refused path): that fails
    the block.
    """
    states: dict[str, _FileState] = {}
    failures: list[EditError] = []
    for block in blocks:
        if block.path not in states:
            states[block.path] = _load(block.path, read)
        state = states[block.path]
        try:
            state.text = _apply_block(state, block).text
            state.history.append((block.index, state.text))
        except BlockFailure as failure:
            failures.append(_block_error(block.index, block.path, str(failure)))
    failing_paths = {error.path for error in failures}
    for path, state in states.items():
        if path not in failing_paths and (failure := _syntax_failure(path, state)) is not None:
            failures.append(failure)
    if failures:
        raise _combined(sorted(failures, key=lambda error: error.block_index or 0), len(blocks))
    changes = [FileChange(path, state.before, _encode(state)) for path, state in states.items()]
    return [change for change in changes if change.after != change.before]


def _block_error(index: int, path: str, reason: str) -> EditError:
    return EditError(f"Edit block {index + 1} ({path}): {reason}", index, path)


def _load(path: str, read: Callable[[str], str | None]) -> _FileState:
    try:
        raw = read(path)
    except (OSError, ValueError) as exc:
        return _FileState(before=None, syntax=FileSyntax(path, ""), error=f"cannot use this path: {exc}")
    if raw is None:
        return _FileState(before=None, syntax=FileSyntax(path, ""))
    bom = raw.startswith("\ufeff")
    body = raw[1:] if bom else raw
    crlf = "\r\n" in body and body.count("\r\n") == body.count("\n")
    text = body.replace("\r\n", "\n") if crlf else body
    return _FileState(before=raw, syntax=FileSyntax(path, text), text=text, crlf=crlf, bom=bom)


def _encode(state: _FileState) -> str | None:
    if state.text is None:
        return None
    text = state.text.replace("\n", "\r\n") if state.crlf else state.text
    return "\ufeff" + text if state.bom else text


def _syntax_failure(path: str, state: _FileState) -> EditError | None:
    """An error for the first block after which a cleanly parsed file stopped parsing, if the end
    result does not parse; None when the file is fine, was broken before, or has no grammar."""
    if state.text is None or not state.history or not state.syntax.parsed:
        return None
    original = state.before[1:] if state.before and state.before.startswith("\ufeff") else state.before
    if original is not None and state.crlf:
        original = original.replace("\r\n", "\n")
    if (original is not None and state.syntax.problem(original) is not None) or \
            state.syntax.problem(state.text) is None:
        return None
    for index, text in state.history:
        if text is not None and (problem := state.syntax.problem(text)) is not None:
            return _block_error(index, path, f"after this block the file no longer parses as "
                                f"{state.syntax.language} (it did before): the first error is at line "
                                f"{problem.row + 1}, `{problem.text}`. Check the block's indentation, brackets "
                                "and quotes, and that SEARCH covers whole statements.")
    return None


def _apply_block(state: _FileState, block: EditBlock) -> _Outcome:
    """The file's text after `block`; raises BlockFailure."""
    if state.error:
        raise BlockFailure(state.error)
    if block.kind == "delete":
        if state.text is None:
            raise BlockFailure("there is no such file to delete. Check the path, or drop this block.")
        return _Outcome(None)
    if block.readings:
        return _apply_readings(state, block)
    return _apply_reading(state, block.search, block.replace)


def _apply_readings(state: _FileState, block: EditBlock) -> _Outcome:
    """The one reading of a body with several `=======` lines that the file supports.

    A reading is doubtful when the file goes on, right after its SEARCH, with the very `=` line it
    took as the divider: that line is then file content, and a later divider is the real one.
    """
    applied: list[tuple[int, _Outcome]] = []
    failures: list[str] = []
    for n, (search, replace) in enumerate(block.readings):
        try:
            applied.append((n, _apply_reading(state, search, replace)))
        except BlockFailure as failure:
            failures.append(str(failure))
    sure = [(n, outcome) for n, outcome in applied if not _doubtful(block, n, outcome)]
    if len(sure) == 1:
        return sure[0][1]
    count = len(block.readings)
    if not applied:
        raise BlockFailure(f"its body has {count} lines that could be the `=======` divider, and with none of "
                           f"them does SEARCH match. With the first: {failures[0]}")
    raise BlockFailure(f"its body has {count} lines that could be the `=======` divider, and the file "
                       "does not settle which one it is. Use longer markers for this block, which "
                       "the body cannot contain: `<<<<<<<<< SEARCH`, `=========`, `>>>>>>>>> REPLACE`.")


def _doubtful(block: EditBlock, n: int, outcome: _Outcome) -> bool:
    if n + 1 >= len(block.readings) or outcome.following is None:
        return False
    divider = text_lines(block.readings[n + 1][0])[len(text_lines(block.readings[n][0]))]
    return outcome.following.strip() == divider.strip()


def _apply_reading(state: _FileState, search: str, replace: str) -> _Outcome:
    if reading_kind(search) == "create":
        if state.text is not None:
            raise BlockFailure("the file already exists, and an empty SEARCH only creates new files. To "
                               "change it, SEARCH for the lines to change (to add at the end, the last "
                               "lines); to rewrite it whole, DELETE it and create it again.")
        _refuse_lazy(state.syntax.language, [], text_lines(replace), None)
        return _Outcome(replace)
    if state.text is None:
        raise BlockFailure("the file does not exist. Check the path against the repository; to create "
                           "a new file, leave the SEARCH section empty.")
    return _replace(state, text_lines(search), text_lines(replace))


def _replace(state: _FileState, search: list[str], replace: list[str]) -> _Outcome:
    assert state.text is not None
    lines, eol = text_lines(state.text), state.text.endswith("\n") or not state.text
    try:
        found = _first_match(state, lines, search, replace)
    except _Ambiguous:
        raise
    except BlockFailure as failure:  # e.g. `...` pairing: a literal `...` stub read with tabs may fit
        if (found := _tab_match(state, lines, search, replace)) is None:
            raise failure from None
    if found is None:
        found = _tab_match(state, lines, search, replace)
    if found is None:
        raise BlockFailure(not_found_message(lines, search, replace, state.syntax.path))
    attempt, match = found
    following = next((line for line in lines[match.end:] if line.strip()), None)
    if not attempt.elided:
        _refuse_lazy(state.syntax.language, attempt.written[0], attempt.replacements[0], following)
    new = splice(lines, attempt, match)
    return _Outcome("\n".join(new) + ("\n" if eol and new else ""), following)


class _Ambiguous(BlockFailure):
    """SEARCH matches more than one place."""


def _first_match(state: _FileState, lines: list[str], search: list[str],
                 replace: list[str]) -> tuple[Attempt, Match] | None:
    """The first rung's one match; BlockFailure when a rung matches several places."""
    for attempt in attempts(search, replace):
        matches = find(lines, attempt.parts, attempt.loose)
        if attempt.elided and matches:
            matches = _within_units(state, lines, matches)
        if len(matches) > 1:
            raise _Ambiguous(ambiguous_message(search, matches))
        if matches:
            return attempt, matches[0]
    return None


def _tab_match(state: _FileState, lines: list[str], search: list[str],
               replace: list[str]) -> tuple[Attempt, Match] | None:
    """For a file indented with tabs and a SEARCH indented with spaces: the match found reading some
    number of spaces (2, 4 or 8) as a tab. A width that matches exactly beats one that needs a shift;
    two widths with equal evidence are no evidence."""
    if not any(line.startswith("\t") for line in lines) or any("\t" in indent_of(line) for line in search) \
            or not any(line.startswith(" ") for line in search):
        return None
    hits: dict[int, tuple[Attempt, Match]] = {}
    unclear: list[int] = []
    for width in (2, 4, 8):
        try:
            hit = _first_match(state, lines, retab(search, width), retab(replace, width))
        except BlockFailure:
            unclear.append(width)
            continue
        if hit is not None:
            hits[width] = hit
    exact = [width for width, (attempt, _) in hits.items() if not attempt.loose]
    best = exact if exact else list(hits)
    if len(best) == 1 and not unclear:
        return hits[best[0]]
    if best or unclear:
        widths = " and ".join(str(width) for width in sorted(best + unclear))
        raise BlockFailure(f"SEARCH is indented with spaces where the file uses tabs, and it matches when "
                           f"{widths} spaces are read as a tab, so which lines it means is unclear. Copy "
                           "SEARCH with the file's tabs.")
    return None


def _within_units(state: _FileState, lines: list[str], matches: list[Match]) -> list[Match]:
    """The matches whose every `...` stands for lines inside one syntactic unit (a function, a class,
    a block); a reading that would run past the end of one is no reading. BlockFailure if none is."""
    tree = state.syntax.tree(state.text or "")
    problems = [_unit_problem(state, lines, tree, match.rows) for match in matches]
    valid = [match for match, problem in zip(matches, problems) if problem is None]
    if not valid:
        raise BlockFailure(problems[0] or "")
    return valid


def _unit_problem(state: _FileState, lines: list[str], tree: Tree | None,
                  rows: tuple[tuple[int, ...], ...]) -> str | None:
    """Why one of the `...` in a match runs out of its unit (judged from the nearest non-blank line
    before it), or None."""
    for left, right in zip(rows, rows[1:]):
        before = next((row for row in reversed(left) if lines[row].strip()), left[-1])
        after = next((row for row in right if lines[row].strip()), right[0])
        if not state.syntax.within_one_unit(lines, tree, before, after):
            return (f"a `...` in SEARCH would stand for file lines {left[-1] + 2}-{right[0]}, which run past "
                    f"the end of the function, class or block that `{lines[before].strip()}` is in, up to "
                    f"`{lines[after].strip()}`. `...` may only stand for lines inside one unit; write SEARCH "
                    "out in full there, or use two blocks.")
    return None


def _refuse_lazy(language: str, search: list[str], replace: list[str], following: str | None) -> None:
    """A `# ... rest unchanged` comment or a bare `...` in REPLACE would be written literally in place of
    the code it stands for. It may stay only where SEARCH has the same line at that place, or, for a
    bare `...` that adds a Python stub body, where it replaces nothing."""
    for tag, _, _, j1, j2 in align(search, replace):
        for j in range(j1, j2):
            if tag == "equal" or not _LAZY.match(replace[j]):
                continue
            if tag == "insert" and is_stub_body(language, replace, j, following):
                continue
            stub = " (for a stub, put `...` on the `def` line itself)" if replace[j].strip() == "..." else ""
            raise BlockFailure(f"REPLACE line {j + 1} is `{replace[j].strip()}`, which would be written literally "
                               f"in place of the code it stands for{stub}. Write the new lines out in full; "
                               "`...` may only stand for unchanged lines when the same `...` line is at the "
                               "same place in SEARCH.")


def _combined(failures: list[EditError], total: int) -> EditError:
    if total == 1:
        head = "The edit block could not be applied, so no file was changed.\n\n"
    else:
        head = (f"{len(failures)} of {total} edit blocks could not be applied, so no file was changed "
                "(not even by the blocks that were fine). Send all the edit blocks again, with these "
                "fixed:\n\n")
    body = "\n\n".join(failure.message for failure in failures)
    return EditError(head + body, failures[0].block_index, failures[0].path, failures)
