"""The ways a model writes one hunk of the release-diff corpus (see `release_corpus.py`).

Each variant gives the file the repository holds, the answer (always with LF newlines, as models
write), and the expected file: one tuple per line of the forms (with endings) that line may take.
Most lines have one form. `mixed` lets a line the edit writes end in LF or CRLF, and `trailing_ws`
lets a line keep or lose the file's trailing whitespace, where the answer cannot say which: a line
that is new, or whose pairing with a SEARCH line depends on how the two are aligned (its text
occurs more than once, e.g. a blank line, or an indentation-blind diff pairs it otherwise).
`expected` None means the answer must be refused. A variant that does not fit a hunk is skipped.
"""

from __future__ import annotations

import difflib
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.agent.release_corpus import FilePair, Hunk

VARIANTS = ("exact", "both_less", "both_more", "search_more", "search_less", "tabs", "tabs_search_less",
            "spaces_for_tabs", "crlf", "mixed", "trailing_ws", "dot_path", "fenced_path", "twice", "eq_line", "conflict",
            "elided", "elided_body", "elided_header", "elided_overrun", "elided_comment", "lazy_replace")
FENCE_INFO = {"python": "python", "javascript": "javascript", "typescript": "typescript", "c": "c",
              "rust": "rust", "markdown": "markdown", "rst": "rst"}
ELISION_COMMENT = {"python": "# ... existing code ...", "javascript": "// ... existing code ...",
                   "typescript": "// ... existing code ...", "c": "// ... existing code ...",
                   "rust": "// ... existing code ...", "markdown": "<!-- ... -->"}

Forms = tuple[str, ...]  # the accepted forms of one expected line, with endings; the first is preferred


@dataclass(frozen=True)
class Case:
    """One answer to run: the repository file, the response text, the expected result."""

    pair: FilePair
    hunk: int
    variant: str
    file_text: str
    response: str
    expected: tuple[Forms, ...] | None  # None: the answer must be refused

    @property
    def path(self) -> str:
        return self.pair.path

    @property
    def language(self) -> str:
        return self.pair.language

    def expected_text(self) -> str:
        return "".join(forms[0] for forms in self.expected or ())

    def expected_like(self, actual: str) -> str:
        """The expected file with each line in the form `actual` gave it where that form is accepted
        (so a diff against `actual` shows only real differences)."""
        expected, got = list(self.expected or ()), split_lines(actual)
        chosen = [forms[0] for forms in expected]
        blind = difflib.SequenceMatcher(None, [body(forms[0]) for forms in expected], [body(x) for x in got],
                                        autojunk=False)
        for tag, i1, i2, j1, _ in blind.get_opcodes():
            for t in range(i2 - i1 if tag == "equal" else 0):
                if got[j1 + t] in expected[i1 + t]:
                    chosen[i1 + t] = got[j1 + t]
        return "".join(chosen)

    def matches(self, actual: str) -> bool:
        """Whether `actual` is the expected file: every line in one of its accepted forms."""
        assert self.expected is not None
        if all(len(forms) == 1 for forms in self.expected):
            return actual == self.expected_text()
        got = split_lines(actual)
        return len(got) == len(self.expected) and all(have in forms for have, forms in zip(got, self.expected))


def split_lines(text: str) -> list[str]:
    """`text` cut after each `\\n` (only there, unlike str.splitlines), endings kept."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def ending(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n" if line.endswith("\n") else ""


def body(line: str) -> str:
    return line[:len(line) - len(ending(line))]


def indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip(" \t"))]


def tabify(line: str) -> str:
    """Each leading group of 4 spaces as a tab (leading indentation only)."""
    tabs = 0
    while line.startswith("    ", 4 * tabs):
        tabs += 1
    return "\t" * tabs + line[4 * tabs:]


def untabify(line: str) -> str:
    """Each leading tab as 4 spaces (leading indentation only)."""
    lead = indent(line)
    return lead.replace("\t", "    ") + line[len(lead):]


def _crlf(line: str) -> str:
    return body(line) + "\r\n" if ending(line) else line


@dataclass(frozen=True)
class _Spec:
    """A variant before it becomes a Case: file lines, answer lines, expected lines, path style."""

    file: list[str]
    search: list[str]
    replace: list[str]
    expected: list[Forms] | None
    style: str = "line"  # "line" (path alone above the fence), "dot" (./path), "fence" (in the info)


class _Hunk:
    """A hunk with what the variants share: old lines, SEARCH/REPLACE bodies, the exact result."""

    def __init__(self, pair: FilePair, hunk: Hunk) -> None:
        self.pair, self.hunk = pair, hunk
        self.old = split_lines(pair.old)
        self.a, self.b = hunk.start, hunk.end
        self.search = [body(line) for line in self.old[self.a:self.b]]
        self.replace = [body(line) for line, _ in hunk.replace]
        starts = Counter(line[:1] for line in self.old if line.strip())
        self.unit = "\t" if starts["\t"] > starts[" "] else "    "

    def expected(self, file: list[str], new: Callable[[str], str] = lambda line: line) -> list[Forms]:
        """`file` with this hunk applied: kept lines as `file` has them, new ones through `new`."""
        middle = [(file[k],) if k is not None else (new(line),) for line, k in self.hunk.replace]
        return [(line,) for line in file[:self.a]] + middle + [(line,) for line in file[self.b:]]

    def certain(self) -> set[int]:
        """REPLACE positions of kept lines whose pairing with SEARCH no alignment can doubt: the text
        occurs once in SEARCH and once in REPLACE, and an indentation-blind diff keeps it too."""
        keys = [line.strip() for line in self.search], [line.strip() for line in self.replace]
        blind = difflib.SequenceMatcher(None, *keys, autojunk=False)
        paired = {j + t: i + t for tag, i, _, j, end in blind.get_opcodes() if tag == "equal"
                  for t in range(end - j)}
        counts = Counter(keys[0]), Counter(keys[1])
        return {j for j, (_, k) in enumerate(self.hunk.replace) if k is not None and paired.get(j) == k - self.a
                and counts[0][keys[1][j]] == 1 and counts[1][keys[1][j]] == 1}

    def plain(self, style: str = "line") -> _Spec:
        return _Spec(self.old, self.search, self.replace, self.expected(self.old), style)

    def inner_run(self, nested: bool = False) -> tuple[int, int] | None:
        """The longest run (first if tied) of >= 3 kept lines strictly inside SEARCH: [from, to) in REPLACE.

        `nested`: only runs whose lines are all indented deeper than the non-blank lines on either
        side of the run (a block's body, the way models elide), judged by indentation alone."""
        best: tuple[int, int] | None = None
        pos = 0
        replace = self.hunk.replace
        while pos < len(replace):
            end = pos
            while end < len(replace) and replace[end][1] is not None and (
                    end == pos or replace[end][1] == replace[end - 1][1] + 1):  # type: ignore[operator]
                end += 1
            if end == pos:
                pos += 1
                continue
            first, last = replace[pos][1], replace[end - 1][1]
            assert first is not None and last is not None
            if end - pos >= 3 and first > self.a and last < self.b - 1 and (
                    not nested or self._nested(first, last)) and (best is None or end - pos > best[1] - best[0]):
                best = (pos, end)
            pos = end
        return best

    def _nested(self, first: int, last: int) -> bool:
        """Old lines first..last are indented deeper than the non-blank lines around them in SEARCH."""
        before = next((line for line in reversed(self.old[self.a:first]) if line.strip()), None)
        after = next((line for line in self.old[last + 1:self.b] if line.strip()), None)
        if before is None or after is None:
            return False
        floor = max(len(indent(before)), len(indent(after)))
        return all(len(indent(line)) > floor for line in self.old[first:last + 1] if line.strip())

    def elide(self, marker: str, in_search: bool = True, nested: bool = False) -> _Spec | None:
        """SEARCH (if `in_search`) and REPLACE with the inner run as one `marker` line."""
        run = self.inner_run(nested)
        if run is None:
            return None
        lines = [line for line, _ in self.hunk.replace[run[0]:run[1]]]
        line = indent(next((x for x in lines if x.strip()), "")) + marker
        replace = self.replace[:run[0]] + [line] + self.replace[run[1]:]
        search = self.search
        if in_search:
            first, last = self.hunk.replace[run[0]][1], self.hunk.replace[run[1] - 1][1]
            assert first is not None and last is not None
            search = self.search[:first - self.a] + [line] + self.search[last + 1 - self.a:]
        return _Spec(self.old, search, replace, self.expected(self.old))


def _common_indent(lines: list[str]) -> str:
    return os.path.commonprefix([indent(line) for line in lines if line.strip()])


def _dedent(lines: list[str], prefix: str) -> list[str]:
    """`prefix` off each nonblank line (a blank line's own whitespace stays, as `_indent` leaves it)."""
    return [line[len(prefix):] if line.strip() and line.startswith(prefix) else line for line in lines]


def _indent(lines: list[str], unit: str) -> list[str]:
    return [unit + line if line.strip() else line for line in lines]


def _exact(h: _Hunk) -> _Spec | None:
    return h.plain()


def _both_less(h: _Hunk) -> _Spec | None:
    prefix = _common_indent(h.search)
    if not prefix or not all(line.startswith(prefix) for line in h.replace if line.strip()):
        return None
    return _Spec(h.old, _dedent(h.search, prefix), _dedent(h.replace, prefix), h.expected(h.old))


def _both_more(h: _Hunk) -> _Spec | None:
    return _Spec(h.old, _indent(h.search, h.unit), _indent(h.replace, h.unit), h.expected(h.old))


def _search_more(h: _Hunk) -> _Spec | None:
    return _Spec(h.old, _indent(h.search, h.unit), h.replace, h.expected(h.old))


def _search_less(h: _Hunk) -> _Spec | None:
    prefix = _common_indent(h.search)
    return _Spec(h.old, _dedent(h.search, prefix), h.replace, h.expected(h.old)) if prefix else None


def _tabs(h: _Hunk) -> _Spec | None:
    if h.unit == "\t":
        return None
    search, replace = [tabify(x) for x in h.search], [tabify(x) for x in h.replace]
    if search == h.search and replace == h.replace:
        return None
    file = [tabify(line) for line in h.old]
    return _Spec(file, search, replace, h.expected(file, tabify))


def _tabs_search_less(h: _Hunk) -> _Spec | None:
    spec = _tabs(h)
    if spec is None or not all(line.startswith("\t") for line in spec.search if line.strip()):
        return None
    return _Spec(spec.file, _dedent(spec.search, "\t"), spec.replace, spec.expected)


def _spaces_for_tabs(h: _Hunk) -> _Spec | None:
    """A tab-indented file (as released, or the `tabs` variant's) answered with 4 spaces per tab."""
    if h.unit == "\t":
        search, replace = [untabify(x) for x in h.search], [untabify(x) for x in h.replace]
        if search == h.search:
            return None
        return _Spec(h.old, search, replace, h.expected(h.old))
    spec = _tabs(h)
    if spec is None or spec.search == h.search:  # SEARCH shows no tab: REPLACE's spaces are literal
        return None
    return _Spec(spec.file, h.search, h.replace, spec.expected)


def _crlf_variant(h: _Hunk) -> _Spec | None:
    file = [_crlf(line) for line in h.old]
    return _Spec(file, h.search, h.replace, h.expected(file, _crlf))


def _mixed(h: _Hunk) -> _Spec | None:
    file = [_crlf(line) if index % 2 else line for index, line in enumerate(h.old)]
    middle: list[Forms] = []
    certain = h.certain()
    for j, (line, k) in enumerate(h.hunk.replace):
        if k is not None and j in certain:
            middle.append((file[k],))
        else:
            middle.append((body(line) + "\n", body(line) + "\r\n"))
    expected = [(line,) for line in file[:h.a]] + middle + [(line,) for line in file[h.b:]]
    return _Spec(file, h.search, h.replace, expected)


def _trailing_ws(h: _Hunk) -> _Spec | None:
    if all(line == line.rstrip(" \t") for line in h.search):
        return None
    kept = {k for _, k in h.hunk.replace}
    deleted = {body(h.old[row]).rstrip(): h.old[row] for row in range(h.a, h.b) if row not in kept}
    middle: list[Forms] = []
    certain = h.certain()
    for j, (line, k) in enumerate(h.hunk.replace):
        stripped = body(line).rstrip() + ending(line)
        if k is not None:
            middle.append((line,) if j in certain else (line, stripped))
        else:  # a change only in trailing whitespace is invisible once it is stripped
            alternative = deleted.get(body(line).rstrip())
            middle.append((stripped,) if alternative is None else (stripped, alternative))
    expected = [(line,) for line in h.old[:h.a]] + middle + [(line,) for line in h.old[h.b:]]
    return _Spec(h.old, [x.rstrip() for x in h.search], [x.rstrip() for x in h.replace], expected)


def _dot_path(h: _Hunk) -> _Spec | None:
    return h.plain("dot")


def _fenced_path(h: _Hunk) -> _Spec | None:
    return h.plain("fence")


def _twice(h: _Hunk) -> _Spec | None:
    return _Spec(h.old + h.old[h.a:h.b], h.search, h.replace, None)


def _eq_line(h: _Hunk) -> _Spec | None:
    if h.hunk.replace[0][1] != h.a:
        return None
    at = h.a + 1
    file = h.old[:at] + ["=======\n"] + h.old[at:]
    expected = [(line,) for line in file[:at]] + [("=======\n",)]
    expected += [(line,) for line, _ in h.hunk.replace[1:]] + [(line,) for line in file[h.b + 1:]]
    search = h.search[:1] + ["======="] + h.search[1:]
    return _Spec(file, search, h.replace[:1] + ["======="] + h.replace[1:], expected)


def _conflict(h: _Hunk) -> _Spec | None:
    (c1, c2), (r1, r2) = h.hunk.change, h.hunk.rchange
    theirs = [line for line, _ in h.hunk.replace[r1:r2]]
    region = ["<<<<<<< HEAD\n", *h.old[c1:c2], "=======\n", *theirs, ">>>>>>> feature\n"]
    file = h.old[:c1] + region + h.old[c2:]
    search = [body(line) for line in h.old[h.a:c1] + region + h.old[c2:h.b]]
    return _Spec(file, search, h.replace, h.expected(h.old))


def _elided(h: _Hunk) -> _Spec | None:
    return h.elide("...")


def _elided_body(h: _Hunk) -> _Spec | None:
    return h.elide("...", nested=True)


def _header(h: _Hunk) -> int | None:
    """The old index of the header of the block the hunk is in: the nearest non-blank line above it
    indented less than the hunk's first line, with non-blank lines between (at most 80 lines up)."""
    first = next((line for line in h.old[h.a:h.b] if line.strip()), None)
    if first is None or not indent(first):
        return None
    depth = len(indent(first))
    header = next((k for k in range(h.a - 1, max(h.a - 80, 0) - 1, -1)
                   if h.old[k].strip() and len(indent(h.old[k])) < depth), None)
    if header is None or not any(line.strip() for line in h.old[header + 1:h.a]):
        return None
    return header


def _elided_header(h: _Hunk) -> _Spec | None:
    """SEARCH and REPLACE start at the header of the block the hunk is in, with a `...` for the lines
    between: how models point at a spot in a function."""
    header = _header(h)
    if header is None:
        return None
    first = next(line for line in h.search if line.strip())
    head, marker = body(h.old[header]), indent(first) + "..."
    return _Spec(h.old, [head, marker, *h.search], [head, marker, *h.replace], h.expected(h.old))


_DEFINITION = re.compile(r"^\s*(?:export\s+)?(?:pub(?:\([\w:]+\))?\s+)?(?:async\s+)?(?:def|class|function|fn)\s+\w")


def _elided_overrun(h: _Hunk) -> _Spec | None:
    """`def a(...):` / `...` / a line the model thinks is in `a` but that is only in the next
    definition: the `...` would run past the end of `a`, and applying it there is wrong; it must be
    refused. Only for a hunk inside a definition (Python, JS/TS or Rust) followed by another."""
    header = _header(h)
    if header is None or not _DEFINITION.match(h.old[header]):
        return None
    depth = len(indent(h.old[header]))
    following = next((k for k in range(header + 1, len(h.old)) if _DEFINITION.match(h.old[k])
                      and len(indent(h.old[k])) <= depth), None)
    if following is None:
        return None
    counts = Counter(h.old)
    later = next((k for k in range(following + 1, len(h.old)) if h.old[k].strip()
                  and len(indent(h.old[k])) > depth and counts[h.old[k]] == 1), None)
    if later is None or len(indent(h.old[later])) <= len(indent(h.old[following])) or counts[h.old[header]] != 1:
        return None  # (a header written more than once, e.g. overloads, may be the later line's own)
    head, line = body(h.old[header]), body(h.old[later])
    marker = indent(line) + "..."
    return _Spec(h.old, [head, marker, line], [head, marker, line, line], None)


def _elided_comment(h: _Hunk) -> _Spec | None:
    comment = ELISION_COMMENT.get(h.pair.language)
    return h.elide(comment) if comment else None


def _lazy_replace(h: _Hunk) -> _Spec | None:
    return h.elide("...", in_search=False)


_BUILDERS: dict[str, Callable[[_Hunk], _Spec | None]] = {
    "exact": _exact, "both_less": _both_less, "both_more": _both_more, "search_more": _search_more,
    "search_less": _search_less, "tabs": _tabs, "tabs_search_less": _tabs_search_less,
    "spaces_for_tabs": _spaces_for_tabs, "crlf": _crlf_variant,
    "mixed": _mixed, "trailing_ws": _trailing_ws, "dot_path": _dot_path, "fenced_path": _fenced_path,
    "twice": _twice, "eq_line": _eq_line, "conflict": _conflict, "elided": _elided,
    "elided_body": _elided_body, "elided_header": _elided_header,
    "elided_overrun": _elided_overrun, "elided_comment": _elided_comment, "lazy_replace": _lazy_replace,
}
assert tuple(_BUILDERS) == VARIANTS


def response(path: str, language: str, search: list[str], replace: list[str], style: str = "line") -> str:
    """One SEARCH/REPLACE block as a model writes it (LF newlines)."""
    fence = "````" if any(line.lstrip().startswith("```") for line in search + replace) else "```"
    info = FENCE_INFO[language]
    shown = f"./{path}" if style == "dot" else path
    head = f"{fence}{info} {path}\n" if style == "fence" else f"{shown}\n{fence}{info}\n"
    return (head + "<<<<<<< SEARCH\n" + "".join(line + "\n" for line in search) + "=======\n"
            + "".join(line + "\n" for line in replace) + ">>>>>>> REPLACE\n" + fence + "\n")


def variants(pair: FilePair, hunk: Hunk) -> list[Case]:
    """Every variant that fits `hunk`, in VARIANTS order."""
    shared = _Hunk(pair, hunk)
    cases = []
    for name, build in _BUILDERS.items():
        spec = build(shared)
        if spec is None:
            continue
        expected = tuple(spec.expected) if spec.expected is not None else None
        text = response(pair.path, pair.language, spec.search, spec.replace, spec.style)
        cases.append(Case(pair, hunk.index, name, "".join(spec.file), text, expected))
    return cases
