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

from collections import Counter
from dataclasses import dataclass
from difflib import SequenceMatcher

from v4.agent.edit_blocks import BlockFailure, indent_of
from v4.agent.edit_match import Attempt, Match, Shift


def splice(lines: list[str], attempt: Attempt, match: Match) -> list[str]:
    """`lines` with each matched part replaced; the runs between parts (the `...`) are kept."""
    frame = replace_frame(lines, attempt, match)
    out: list[str] = []
    previous = 0
    for written, rows, replacement in zip(attempt.written, match.rows, attempt.replacements):
        entries = _entries(lines, written, rows, previous)
        first = next(entry.row for entry in entries if entry.row is not None)
        out += lines[previous:first]
        out += _splice_part(lines, entries, [_convert(line, frame) for line in replacement])
        previous = max(entry.row for entry in entries if entry.row is not None) + 1
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
    """(SEARCH line, REPLACE line) pairs with the same text, aligned in order; blank lines left out.

    Only lines whose text occurs once in SEARCH and once in REPLACE count where there are any: a
    `}` or `return None` can pair with the wrong one of its copies and vote for the wrong frame.
    """
    pairs = []
    for tag, i1, i2, j1, _ in align(part, replacement):
        if tag == "equal":
            pairs += [(i1 + t, j1 + t) for t in range(i2 - i1) if part[i1 + t].strip()]
    in_part = Counter(line.strip() for line in part)
    in_replacement = Counter(line.strip() for line in replacement)
    unique = [(k, j) for k, j in pairs if in_part[part[k].strip()] == 1 and in_replacement[part[k].strip()] == 1]
    return unique or pairs


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


@dataclass(frozen=True)
class _Entry:
    """One line of a matched span as the model saw it: `said` is its SEARCH line ("" for a blank line
    SEARCH left out), `row` its file row (None for a blank line SEARCH has and the file has not)."""

    said: str
    row: int | None
    unseen: bool = False


def _entries(lines: list[str], written: list[str], rows: tuple[int, ...], floor: int) -> list[_Entry]:
    """The span SEARCH matched, as `_Entry`s: its rows widened over the blank lines SEARCH begins or ends
    with (where the file has them too), then lined up with SEARCH as written."""
    exact = len(rows) == len(written)  # every SEARCH line, blank ones too, already has its row
    lead = 0 if exact else len(written) - len(_drop_blank_edge(written))
    tail = 0 if exact else len(written) - len(_drop_blank_edge(written[::-1]))
    low, high = rows[0], rows[-1] + 1
    while lead and low > floor and not lines[low - 1].strip():
        low, lead = low - 1, lead - 1
    while tail and high < len(lines) and not lines[high].strip():
        high, tail = high + 1, tail - 1
    span = list(range(low, high))
    entries: list[_Entry] = []
    for tag, i1, i2, j1, j2 in align([lines[row] for row in span], written):
        if tag == "equal":
            entries += [_Entry(written[j1 + t], span[i1 + t]) for t in range(i2 - i1)]
            continue
        entries += [_Entry("", row, unseen=True) for row in span[i1:i2]]
        entries += [_Entry(said, None) for said in written[j1:j2]]
    return entries


def _drop_blank_edge(lines: list[str]) -> list[str]:
    count = 0
    while count < len(lines) and not lines[count].strip():
        count += 1
    return lines[count:]


def _splice_part(lines: list[str], entries: list[_Entry], replacement: list[str]) -> list[str]:
    """The lines that replace the span of `entries`, REPLACE aligned against SEARCH as written."""
    out: list[str] = []
    for tag, i1, i2, j1, j2 in align([entry.said for entry in entries], replacement):
        old, new = entries[i1:i2], replacement[j1:j2]
        if tag == "equal":
            out += [_kept(lines, entry, line) for entry, line in zip(old, new) if entry.row is not None]
        elif tag == "insert":
            out += [line + _ending(lines, _nearest_row(entries, i1 - 1)) for line in new]
        elif tag == "delete":
            out += [lines[e.row] for e in old if e.row is not None] if all(e.unseen for e in old) else []
        else:
            out += _replaced(lines, entries, i1, i2, new)
    return out


def _kept(lines: list[str], entry: _Entry, want: str) -> str:
    """The file's own line where the edit leaves it as it is; else the new line with the old ending.

    Left as it is: same indentation and text, and trailing whitespace changed neither way from what
    SEARCH said (a SEARCH that dropped the file's trailing spaces does not strip them)."""
    assert entry.row is not None
    have = lines[entry.row]
    same = have.rstrip() == want.rstrip() and _trailing(want) == _trailing(entry.said)
    return have if same or entry.unseen else want + _ending(lines, entry.row)


def _trailing(line: str) -> str:
    return line[len(line.rstrip()):]


def _nearest_row(entries: list[_Entry], at: int) -> int | None:
    """The file row of `entries[at]` or the nearest entry before it (after it, at the start)."""
    before = [entry.row for entry in entries[:max(at, 0) + 1] if entry.row is not None]
    after = [entry.row for entry in entries if entry.row is not None]
    return before[-1] if before else (after[0] if after else None)


def _replaced(lines: list[str], entries: list[_Entry], i1: int, i2: int, new: list[str]) -> list[str]:
    """New lines for `entries[i1:i2]`, some of which may be blank lines SEARCH left out."""
    old = entries[i1:i2]
    seen = [n for n, entry in enumerate(old) if not entry.unseen]
    unseen_rows = [entry.row for entry in old if entry.unseen and entry.row is not None]
    if not unseen_rows:
        return [line + _ending(lines, _nearest_row(entries, i1 + min(t, len(old) - 1))) for t, line in enumerate(new)]
    first = unseen_rows[0] + 1
    if not seen:  # only left-out blank lines are replaced
        if any(line.strip() for line in new):
            raise BlockFailure(f"SEARCH leaves out the blank line(s) at file line {first}, where REPLACE adds "
                               "lines, so whether the new lines go before or after them is unclear. Copy "
                               "SEARCH with the file's blank lines.")
        if len(new) == len(unseen_rows):
            return [lines[row] for row in unseen_rows]
        return [line + _ending(lines, unseen_rows[0]) for line in new]
    if len(new) != len(seen):
        raise BlockFailure(f"SEARCH leaves out the blank line(s) at file line {first}, among the lines this "
                           "block changes, so where they belong in REPLACE is unclear. Copy SEARCH with the "
                           "file's blank lines.")
    queue = iter(new)  # one line for one line: the left-out blank lines stay where they were
    out = []
    for n, entry in enumerate(old):
        if entry.unseen:
            out.append(lines[entry.row] if entry.row is not None else "")
        else:
            line = next(queue)
            out.append(line + _ending(lines, _nearest_row(entries, i1 + n)))
    return out


def _ending(lines: list[str], row: int | None) -> str:
    """`\\r` where the file line `row` ends with one (a CRLF line of a mixed-newline file)."""
    return "\r" if row is not None and lines[row].endswith("\r") else ""
