"""Messages for the model when a block does not match, and the nearest lines to show it.

`closest_window` is linear in the file's size and stops at a time budget: each line is compared by
its first `_KEY_CHARS` characters, first for equal lines, then by shared character trigrams, and
every comparison votes for the window start it implies. (It replaced a difflib search that was
quadratic in line length: a miss against a file with one 20,000-character line took 95 s.)
"""

from __future__ import annotations

import time
from collections import defaultdict

from v4.agent.edit_match import Match, cut_at_elisions, find, is_elision

_EXCERPT_LINES = 12  # SEARCH lines quoted back in an error
_KEY_CHARS = 240  # characters of a line compared when looking for the nearest lines
_BUDGET_S = 0.5  # time allowed to look for the nearest lines, per failed block
_MIN_SIMILARITY = 0.5  # a window this far from SEARCH (mean per-line similarity) is not shown


def ambiguous_message(search: list[str], matches: list[Match]) -> str:
    starts = ", ".join(str(match.start + 1) for match in matches[:10])
    more = f" and {len(matches) - 10} more" if len(matches) > 10 else ""
    return (f"SEARCH matches {len(matches)} places (starting at lines {starts}{more}); it must match "
            f"exactly one. Add a few neighbouring lines so that it is unique:\n{fenced(search)}")


def not_found_message(lines: list[str], search: list[str], replace: list[str], path: str) -> str:
    target = _missing_piece(lines, search)
    parts = [f"SEARCH does not match the file:\n{fenced(search)}"]
    window = closest_window(lines, target) if target else None
    if target is None:
        parts.append("Each run of lines around the `...` lines is in the file, but not in this order. "
                     "Check the order of the runs, or write SEARCH out in full.")
    elif window is not None:
        start, end = window
        where = f"line {end}" if end - start == 1 else f"lines {start + 1}-{end}"
        parts.append(f"Did you mean these lines ({path}, {where})?\n{fenced(lines[start:end])}")
    else:
        parts.append("No similar lines were found in the file; check that this is the right file.")
    written = [line for line in replace if line.strip() and not is_elision(line)]
    if written and find(lines, [written], True):
        parts.append("The REPLACE lines are already in the file: this edit may have been made already; "
                     "if so, drop this block.")
    parts.append("SEARCH must copy the file's current lines exactly (indentation, comments, blank lines "
                 "and all); use `...` lines only as described for eliding unchanged lines.")
    return "\n".join(parts)


def _missing_piece(lines: list[str], search: list[str]) -> list[str] | None:
    """The SEARCH lines to find the nearest lines for: the first `...`-separated piece that is not in
    the file; None when every piece is there (so only their order is wrong)."""
    pieces = [piece for piece in cut_at_elisions(search) if any(line.strip() for line in piece)]
    if len(pieces) <= 1:
        return search
    for piece in pieces:
        if not find(lines, [[line for line in piece if line.strip()]], True):
            return piece
    return None


def closest_window(lines: list[str], target: list[str], budget_s: float = _BUDGET_S) -> tuple[int, int] | None:
    """The [start, end) run of file lines most like `target`, if it is at all like it.

    Compared without blank lines and indentation, as the loose rung matches, so a SEARCH that left
    out blank lines still lines up with the run it meant. Linear in the file's size; None when
    nothing is close enough or the time budget ran out first.
    """
    rows = [i for i, line in enumerate(lines) if line.strip()]
    keys = [_key(lines[i]) for i in rows]
    wanted = [_key(line) for line in target if line.strip() and not is_elision(line)]
    size = min(len(wanted), len(keys))
    if size == 0:
        return None
    wanted = wanted[:size]
    scores = _exact_votes(keys, wanted, size)
    if not scores or max(scores.values()) < _MIN_SIMILARITY * size:
        scores = _similar_votes(keys, wanted, size, time.monotonic() + budget_s)
    if not scores:
        return None
    best = max(scores, key=lambda start: (scores[start], -start))
    if scores[best] < _MIN_SIMILARITY * size:
        return None
    return rows[best], rows[best + size - 1] + 1


def _key(line: str) -> str:
    return line.strip()[:_KEY_CHARS]


def _exact_votes(keys: list[str], wanted: list[str], size: int) -> dict[int, float]:
    """Window start -> number of its lines equal to the SEARCH line at the same offset."""
    offsets: dict[str, list[int]] = defaultdict(list)
    for k, key in enumerate(wanted):
        offsets[key].append(k)
    scores: dict[int, float] = defaultdict(float)
    for i, key in enumerate(keys):
        for k in offsets.get(key, ()):
            if 0 <= i - k <= len(keys) - size:
                scores[i - k] += 1.0
    return scores


def _similar_votes(keys: list[str], wanted: list[str], size: int, deadline: float) -> dict[int, float]:
    """Window start -> summed trigram similarity (Dice) of its lines to SEARCH's at the same offset."""
    wanted_grams = [_trigrams(key) for key in wanted]
    scores: dict[int, float] = defaultdict(float)
    for i, key in enumerate(keys):
        if i % 256 == 0 and time.monotonic() > deadline:
            return {}
        grams = _trigrams(key)
        for k, other in enumerate(wanted_grams):
            start = i - k
            if not 0 <= start <= len(keys) - size or not grams or not other:
                continue
            shared = len(grams & other)
            if shared:
                scores[start] += 2.0 * shared / (len(grams) + len(other))
    return scores


def _trigrams(key: str) -> set[str]:
    padded = f"  {key} "
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


def fenced(lines: list[str]) -> str:
    """`lines` in a Markdown fence (a longer one if they hold a fence), cut to `_EXCERPT_LINES`."""
    shown = lines[:_EXCERPT_LINES]
    if len(lines) > _EXCERPT_LINES:
        shown = shown + [f"[... {len(lines) - _EXCERPT_LINES} more lines]"]
    fence = "````" if any(line.lstrip().startswith("```") for line in shown) else "```"
    return "\n".join([fence, *shown, fence])
