"""Where a SEARCH is in a file: the matching ladder, each rung a reading of the block.

Rungs, in order; the first that finds anything decides, and it must find exactly one place:

1. exact: line for line, byte for byte;
2. loose: blank lines and trailing whitespace (a `\\r` included) ignored, and the leading
   indentation allowed to differ from the file's by one uniform prefix (the `Shift`);
3. elided, then elided and loose: `...` lines (or `# ... existing code ...`) cut SEARCH and
   REPLACE into pieces that pair up one to one; each run between pieces is kept as it is.

A match records, for every SEARCH line, the file row it matched (`rows`), so that splicing can
keep the file's own bytes on each line the edit does not change.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from v4.agent.edit_blocks import BlockFailure, indent_of

# `...` alone, or as a comment, optionally with a few words: "// ... existing code ...".
ELISION = re.compile(r"^(?:(?:#|//|--|/\*|<!--)\s*)?\.\.\.(?:[ \w,'-]{0,40}(?:\.\.\.)?)?\s*(?:\*/|-->)?$")


def is_elision(line: str) -> bool:
    """True for a line that may stand for unchanged lines (`...`, `# ... existing code ...`)."""
    return bool(ELISION.match(line.strip()))


@dataclass(frozen=True)
class Shift:
    """Uniform indentation difference: the file has `add` more (or `remove` less) than SEARCH."""

    add: str = ""
    remove: str = ""

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)


@dataclass(frozen=True)
class Attempt:
    """One reading of a block: SEARCH parts to find, REPLACE parts to put in their place.

    `written` holds the parts as the model wrote them; `parts` is what is matched (without blank
    lines, on the loose rungs).
    """

    parts: list[list[str]]
    replacements: list[list[str]]
    loose: bool
    elided: bool
    written: list[list[str]]


@dataclass(frozen=True)
class Match:
    """Where an attempt's parts matched: `rows[p][k]` is the file row of line k of part p."""

    rows: tuple[tuple[int, ...], ...]
    shift: Shift

    @property
    def start(self) -> int:
        return self.rows[0][0]

    @property
    def end(self) -> int:
        return self.rows[-1][-1] + 1


def attempts(search: list[str], replace: list[str]) -> Iterator[Attempt]:
    """Exact, loose, then (if SEARCH has `...` lines) both again with elision.

    A generator: the elided reading is only built (and its `...` pairing only checked) once the
    literal readings found nothing, since a `...` line may be real code, e.g. a Python stub body.
    """
    literal = Attempt([search], [replace], False, False, [search])
    candidates: Iterable[Attempt] = (literal, _loose(literal))
    if any(is_elision(line) for line in search):
        candidates = itertools.chain(candidates, _elided_attempts(search, replace))
    return (attempt for attempt in candidates if all(attempt.parts))


def _elided_attempts(search: list[str], replace: list[str]) -> Iterator[Attempt]:
    elided = _elided(search, replace)
    yield elided
    yield _loose(elided)


def _loose(attempt: Attempt) -> Attempt:
    """Blank lines dropped from the SEARCH that is matched (splicing still sees where they were)."""
    parts = [[line for line in part if line.strip()] for part in attempt.parts]
    return Attempt(parts, attempt.replacements, True, attempt.elided, attempt.written)


def _elided(search: list[str], replace: list[str]) -> Attempt:
    """SEARCH and REPLACE cut at their `...` lines; the pieces pair up one to one."""
    parts, replacements = cut_at_elisions(search), cut_at_elisions(replace)
    if len(parts) != len(replacements):
        raise BlockFailure(f"SEARCH has {len(parts) - 1} `...` line(s) but REPLACE has "
                           f"{len(replacements) - 1}. Each `...` in SEARCH needs a `...` at the same place "
                           "in REPLACE, which keeps the lines it stands for; or write SEARCH out in full.")
    for end in (0, -1):  # a leading or trailing `...` stands for nothing to find or keep
        if not parts[end] and not replacements[end] and len(parts) > 1:
            parts.pop(end)
            replacements.pop(end)
    if not all(part for part in parts) or not parts:
        raise BlockFailure("SEARCH must begin and end with real lines from the file, with real lines "
                           "between any two `...` lines (and REPLACE may not add lines outside them).")
    return Attempt(parts, replacements, False, True, parts)


def cut_at_elisions(lines: list[str]) -> list[list[str]]:
    """`lines` split into the runs between `...` lines."""
    pieces: list[list[str]] = [[]]
    for line in lines:
        if is_elision(line):
            pieces.append([])
        else:
            pieces[-1].append(line)
    return pieces


def find(lines: list[str], parts: list[list[str]], loose: bool) -> list[Match]:
    """Every place `parts` match in order (later parts at their first fit after the one before)."""
    matches = []
    first = parts[0][0] if not loose else None
    for start in range(len(lines)):
        if first is not None and lines[start] != first:
            continue  # the exact rung's quick reject
        hit = _part_at(lines, parts[0], start, loose, None)
        if hit is None:
            continue
        rows, shift = [hit[0]], hit[1]
        for part in parts[1:]:
            found = _first_fit(lines, part, rows[-1][-1] + 1, loose, shift)
            if found is None:
                break
            rows.append(found)
        else:
            matches.append(Match(tuple(rows), shift))
    return matches


def _first_fit(lines: list[str], part: list[str], start: int, loose: bool, shift: Shift) -> tuple[int, ...] | None:
    for at in range(start, len(lines)):
        if (hit := _part_at(lines, part, at, loose, shift)) is not None:
            return hit[0]
    return None


def _part_at(lines: list[str], part: list[str], at: int, loose: bool,
             shift: Shift | None) -> tuple[tuple[int, ...], Shift] | None:
    """The file rows `part` matches from `lines[at]`, with the indentation shift it needed."""
    if not loose:
        end = at + len(part)
        return (tuple(range(at, end)), Shift()) if lines[at:end] == part else None
    rows = []
    j = at
    for k, want in enumerate(part):
        while k and j < len(lines) and not lines[j].strip():
            j += 1  # blank lines in the file are skipped (the loose part has none)
        if j >= len(lines):
            return None
        got = shift_between(lines[j], want)
        if got is None or (shift is not None and got != shift):
            return None
        shift = got
        rows.append(j)
        j += 1
    assert shift is not None
    return tuple(rows), shift


def retab(lines: list[str], width: int) -> list[str]:
    """`lines` with each `width` leading spaces as a tab (spaces left over stay, as alignment)."""
    out = []
    for line in lines:
        lead = indent_of(line)
        if "\t" in lead or not lead:
            out.append(line)
            continue
        out.append("\t" * (len(lead) // width) + " " * (len(lead) % width) + line[len(lead):])
    return out


def shift_between(have: str, want: str) -> Shift | None:
    """How `have` (file) is indented relative to `want` (model), if the rest is equal."""
    have, want = have.rstrip(), want.rstrip()
    have_indent, want_indent = indent_of(have), indent_of(want)
    if have[len(have_indent):] != want[len(want_indent):]:
        return None
    if have_indent.endswith(want_indent):
        return Shift(add=have_indent[:len(have_indent) - len(want_indent)])
    if want_indent.endswith(have_indent):
        return Shift(remove=want_indent[:len(want_indent) - len(have_indent)])
    return None
