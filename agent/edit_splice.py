"""A matched block turned into the file's new lines, keeping the file's bytes wherever it can.

Two decisions are made here, both from evidence in the block and the file, never by assumption:

* The REPLACE's frame. When SEARCH matched with an indentation shift, REPLACE may be written in
  SEARCH's frame (shift it too) or already in the file's (leave it). Lines SEARCH and REPLACE share
  vote: a shared line indented as in SEARCH says SEARCH's frame, as in the file says the file's.
  With no shared line, REPLACE's first line is compared with SEARCH's first line and the file's.
  Conflicting or missing evidence, or a line that would go below column 0, fails the block.
* Which bytes each line gets. REPLACE is aligned with the matched span line by line; a line the
  edit does not change is written as the file has it (tabs, trailing spaces, a `\\r` in a
  mixed-newline file); a changed line takes the line ending of the line it replaces. Blank lines
  the file has inside the span but a loose SEARCH left out stay where they are unless the edit
  deletes around them; where new lines would go among them and REPLACE does not say where, the
  block fails.
"""

from __future__ import annotations

from difflib import SequenceMatcher

from v4.agent.edit_blocks import BlockFailure, indent_of
from v4.agent.edit_match import Attempt, Match, Shift


def splice(lines: list[str], attempt: Attempt, match: Match) -> list[str]:
    """`lines` with each matched part replaced; the runs between parts (the `...`) are kept."""
    frame = replace_frame(lines, attempt, match)
    out: list[str] = []
    previous = 0
    for part, rows, replacement in zip(attempt.parts, match.rows, attempt.replacements):
        out += lines[previous:rows[0]]
        out += _splice_part(lines, part, rows, [_convert(line, frame) for line in replacement])
        previous = rows[-1] + 1
    return out + lines[previous:]


def replace_frame(lines: list[str], attempt: Attempt, match: Match) -> Shift:
    """The shift to apply to REPLACE: the match's when REPLACE is in SEARCH's frame, none when it is
    already in the file's; BlockFailure when the evidence conflicts or there is none."""
    if not match.shift:
        return Shift()
    in_search = in_file = 0
    for part, rows, replacement in zip(attempt.parts, match.rows, attempt.replacements):
        for k, j in _shared(part, replacement):
            written = indent_of(replacement[j])
            in_search += written == indent_of(part[k])
            in_file += written == indent_of(lines[rows[k]])
    if in_search and in_file:
        raise BlockFailure(f"SEARCH is indented differently from the file ({_describe(match.shift)}), and "
                           f"REPLACE is not consistently written either way: {in_search} unchanged line(s) "
                           f"keep SEARCH's indentation and {in_file} the file's. Copy SEARCH with the file's "
                           "exact indentation and write REPLACE at the same indentation.")
    if in_search or in_file:
        return match.shift if in_search else Shift()
    return _first_line_frame(lines, attempt, match)


def _first_line_frame(lines: list[str], attempt: Attempt, match: Match) -> Shift:
    for part, rows, replacement in zip(attempt.parts, match.rows, attempt.replacements):
        first = next((line for line in replacement if line.strip()), None)
        if first is None:
            continue
        written = indent_of(first)
        if written == indent_of(part[0]):
            return match.shift
        if written == indent_of(lines[rows[0]]):
            return Shift()
        raise BlockFailure(f"SEARCH is indented differently from the file ({_describe(match.shift)}), so "
                           "it is not clear at which indentation REPLACE is written: its first line is "
                           "indented like neither SEARCH's first line nor the file's. Copy SEARCH with the "
                           "file's exact indentation and write REPLACE at the same indentation.")
    return Shift()  # REPLACE is empty: nothing to place


def _describe(shift: Shift) -> str:
    if shift.add:
        return f"the file has {_width(shift.add)} more at the start of each line"
    return f"SEARCH has {_width(shift.remove)} more at the start of each line"


def _width(indent: str) -> str:
    tabs, spaces = indent.count("\t"), indent.count(" ")
    words = [f"{tabs} tab{'s' * (tabs != 1)}"] if tabs else []
    return " and ".join(words + ([f"{spaces} space{'s' * (spaces != 1)}"] if spaces else []))


def _shared(part: list[str], replacement: list[str]) -> list[tuple[int, int]]:
    """(SEARCH line, REPLACE line) pairs with the same text, aligned in order; blank lines left out."""
    pairs = []
    for tag, i1, i2, j1, _ in align(part, replacement):
        if tag == "equal":
            pairs += [(i1 + t, j1 + t) for t in range(i2 - i1) if part[i1 + t].strip()]
    return pairs


def align(part: list[str], replacement: list[str]) -> list[tuple[str, int, int, int, int]]:
    """difflib opcodes turning `part` into `replacement`, lines compared without surrounding whitespace."""
    matcher = SequenceMatcher(None, [line.strip() for line in part], [line.strip() for line in replacement],
                              autojunk=False)
    return matcher.get_opcodes()


def _convert(line: str, frame: Shift) -> str:
    """A REPLACE line moved into the file's frame."""
    if not line.strip() or not frame:
        return line
    if frame.add:
        return frame.add + line
    if not line.startswith(frame.remove):
        raise BlockFailure(f"REPLACE line `{line.strip()}` is indented less than SEARCH's own lines, so "
                           "moving it to the file's indentation would put it below column 0. Copy SEARCH with "
                           "the file's exact indentation and write REPLACE at the same indentation.")
    return line[len(frame.remove):]


def _splice_part(lines: list[str], part: list[str], rows: tuple[int, ...], replacement: list[str]) -> list[str]:
    """The lines that replace file rows `rows[0]..rows[-1]`, REPLACE aligned against that span.

    The span is SEARCH as written plus the blank lines a loose SEARCH left out ("unseen" rows).
    """
    span = range(rows[0], rows[-1] + 1)
    written = dict(zip(rows, part))
    keys = [written.get(row, lines[row]) for row in span]
    unseen = [row not in written for row in span]
    out: list[str] = []
    for tag, i1, i2, j1, j2 in align(keys, replacement):
        old, new = [rows[0] + i for i in range(i1, i2)], replacement[j1:j2]
        if tag == "equal":
            out += [_kept(lines[row], line) for row, line in zip(old, new)]
        elif tag == "insert":
            out += [line + _ending(lines[rows[0] + max(i1 - 1, 0)]) for line in new]
        elif tag == "delete":
            out += [lines[row] for row in old] if all(unseen[i1:i2]) else []  # unseen blanks stay
        else:
            out += _replaced(lines, old, unseen[i1:i2], new)
    return out


def _kept(have: str, want: str) -> str:
    """The file's own line where the edit leaves it as it is; else the new line with the old ending."""
    return have if have.rstrip() == want.rstrip() else want + _ending(have)


def _replaced(lines: list[str], old: list[int], unseen: list[bool], new: list[str]) -> list[str]:
    """New lines for file rows `old`, some of which may be blank lines SEARCH left out."""
    seen = [row for row, hidden in zip(old, unseen) if not hidden]
    if not any(unseen):
        return [line + _ending(lines[old[min(t, len(old) - 1)]]) for t, line in enumerate(new)]
    if not seen:  # only left-out blank lines are replaced
        if any(line.strip() for line in new):
            raise BlockFailure(f"SEARCH leaves out the blank line(s) at file line {old[0] + 1}, where REPLACE "
                               "adds lines, so whether the new lines go before or after them is unclear. Copy "
                               "SEARCH with the file's blank lines.")
        return [lines[row] for row in old] if len(new) == len(old) else [line + _ending(lines[old[0]]) for line in new]
    if len(new) != len(seen):
        raise BlockFailure(f"SEARCH leaves out the blank line(s) at file line {old[unseen.index(True)] + 1}, "
                           "among the lines this block changes, so where they belong in REPLACE is unclear. "
                           "Copy SEARCH with the file's blank lines.")
    queue = iter(new)  # one line for one line: the left-out blank lines stay where they were
    return [lines[row] if hidden else next(queue) + _ending(lines[row]) for row, hidden in zip(old, unseen)]


def _ending(line: str) -> str:
    return "\r" if line.endswith("\r") else ""
