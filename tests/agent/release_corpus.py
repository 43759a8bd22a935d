"""The release-diff corpus: real file pairs from consecutive releases, cut into SEARCH/REPLACE cases.

Each file pair (tests/fixtures/release_diffs, written by its fetch.py) is diffed line by line, and
each hunk becomes one edit on its own: the repository holds only the old file, the answer edits
that one hunk, and the expected result is the old file with just that hunk applied. Each hunk is
then written the ways models write it (`release_variants.py`: drifted indentation, CRLF files, a
path spelled `./x`, elided runs, ...), and every case must end `exact` (applied, byte for byte
the expected file) or `refused` (EditError, tree untouched); anything else is `wrong`.

Run ``python -m tests.agent.release_corpus`` for the outcome tables as Markdown.
"""

from __future__ import annotations

import difflib
import os
import shutil
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.agent.release_variants import VARIANTS, Case, split_lines, variants
from v4.agent.apply import apply_changes, make_reader
from v4.agent.edits import EditError, parse_edits, plan_changes

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "release_diffs"
CONTEXT = 3  # context lines around each hunk, as `diff -u` writes them
MAX_SEARCH_LINES = 40  # a hunk whose SEARCH must grow past this to be unique is dropped
OUTCOMES = ("exact", "refused", "wrong")


@dataclass(frozen=True)
class FilePair:
    """One file in two consecutive releases of a package, as the manifest lists it."""

    dir: str
    package: str
    old_version: str
    new_version: str
    language: str
    path: str
    old: str
    new: str

    @property
    def name(self) -> str:
        return f"{self.dir}/{self.path}"


@dataclass(frozen=True)
class Hunk:
    """One hunk: SEARCH is `old[start:end]`; `replace` holds (line, old index) pairs, the index set
    for a line kept from the old file (context) and None for a line the new release wrote.
    `change` is the [from, to) span of old lines the hunk really changes, `rchange` its span in
    `replace` (both empty, at the change's place, for a pure insertion or deletion)."""

    index: int
    start: int
    end: int
    replace: tuple[tuple[str, int | None], ...]
    change: tuple[int, int]
    rchange: tuple[int, int]


@dataclass(frozen=True)
class Result:
    """How one case ended: "exact", "refused" or "wrong", and why (the error, or a diff)."""

    case: Case
    outcome: str
    detail: str


def load_pairs(root: Path = FIXTURES) -> list[FilePair]:
    """Every file pair in the manifest, in manifest order."""
    manifest = tomllib.loads((root / "manifest.toml").read_text(encoding="utf-8"))
    pairs = []
    for entry in manifest["pair"]:
        base = root / "pairs" / entry["dir"]
        old, new = ((base / side / entry["path"]).read_bytes().decode("utf-8") for side in ("old", "new"))
        pairs.append(FilePair(entry["dir"], entry["package"], entry["old"], entry["new"], entry["language"],
                              entry["path"], old, new))
    return pairs


def _occurrences(lines: list[str], needle: list[str]) -> int:
    first, size = needle[0], len(needle)
    return sum(1 for at in range(len(lines) - size + 1) if lines[at] == first and lines[at:at + size] == needle)


def hunks(pair: FilePair) -> list[Hunk]:
    """The pair's hunks (`diff -u` groups, numbered in diff order), each with SEARCH grown by a line
    above and below at a time until it occurs exactly once in the old file; a hunk that would need
    more than MAX_SEARCH_LINES to be unique is dropped (a hunk already longer and unique is kept)."""
    old, new = split_lines(pair.old), split_lines(pair.new)
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    out: list[Hunk] = []
    for index, group in enumerate(matcher.get_grouped_opcodes(CONTEXT)):
        start, end = group[0][1], group[-1][2]
        while end > start and _occurrences(old, old[start:end]) != 1:
            grown = (max(start - 1, 0), min(end + 1, len(old)))
            if grown == (start, end) or grown[1] - grown[0] > MAX_SEARCH_LINES:
                break
            start, end = grown
        search = old[start:end]
        if not any(line.strip() for line in search) or _occurrences(old, search) != 1:
            continue
        hunk = _hunk(index, old, new, group, start, end)
        if _touches_unterminated_end(old, hunk):
            continue
        out.append(hunk)
    return out


def _hunk(index: int, old: list[str], new: list[str], group: list[tuple[str, int, int, int, int]],
          start: int, end: int) -> Hunk:
    replace: list[tuple[str, int | None]] = [(old[k], k) for k in range(start, group[0][1])]
    change: list[int] = []
    rchange: list[int] = []
    for tag, i1, i2, j1, j2 in group:
        if tag == "equal":
            replace += [(old[k], k) for k in range(i1, i2)]
            continue
        change += [i1, i2]
        rchange.append(len(replace))
        replace += [(new[k], None) for k in range(j1, j2)]
        rchange.append(len(replace))
    replace += [(old[k], k) for k in range(group[-1][2], end)]
    return Hunk(index, start, end, tuple(replace), (change[0], change[-1]), (rchange[0], rchange[-1]))


def _touches_unterminated_end(old: list[str], hunk: Hunk) -> bool:
    """A hunk at a last line without a newline (an answer cannot say which lines lack one)."""
    return any(not line.endswith("\n") for line, _ in hunk.replace) or (
        hunk.end == len(old) and not old[-1].endswith("\n"))


def build_cases(pairs: Iterable[FilePair]) -> list[Case]:
    """Every case of every hunk of every pair, in a fixed order."""
    return [case for pair in pairs for hunk in hunks(pair) for case in variants(pair, hunk)]


# ---------------------------------------------------------------------------------------------
# Running


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and directory (None) under `root`."""
    found: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = handle.read()
    return found


def run_case(case: Case, root: Path) -> Result:
    """Parse, plan and apply `case` in the repository `root` (which holds only the case's file)."""
    target = root / case.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(case.file_text.encode("utf-8"))
    before = _snapshot(root)
    try:
        changes = plan_changes(parse_edits(case.response), make_reader(root))
        apply_changes(root, changes)
    except EditError as exc:
        if _snapshot(root) != before:
            return Result(case, "wrong", f"refused ({exc.message[:200]}) but changed the tree")
        return Result(case, "refused", exc.message)
    except Exception as exc:  # noqa: BLE001 - anything but EditError is a wrong outcome
        return Result(case, "wrong", f"raised {type(exc).__name__}: {exc}")
    after = _snapshot(root)
    actual = after.pop(case.path, None)
    before.pop(case.path)
    if after != before:
        return Result(case, "wrong", f"other files changed: {sorted(set(after) ^ set(before))}")
    if case.expected is None:
        return Result(case, "wrong", "applied, but this case must be refused")
    text = actual.decode("utf-8", errors="replace") if actual is not None else ""
    if actual is None or not case.matches(text):
        return Result(case, "wrong", _diff(case.expected_like(text), text))
    return Result(case, "exact", "")


def _diff(expected: str, actual: str) -> str:
    lines = difflib.unified_diff(split_lines(expected), split_lines(actual), "expected", "actual", n=2)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)[:3000].replace("\r", "\\r")


def run_all(cases: Iterable[Case], work: Path) -> list[Result]:
    """Run every case, one repository folder per file pair under `work`."""
    results = []
    folders: dict[str, Path] = {}
    for case in cases:
        root = folders.setdefault(case.pair.name, work / f"repo-{len(folders)}")
        root.mkdir(parents=True, exist_ok=True)
        results.append(run_case(case, root))
        if results[-1].outcome == "wrong":
            shutil.rmtree(root)  # whatever it left does not carry into the next case
    return results


# ---------------------------------------------------------------------------------------------
# Reporting


def tally(results: Iterable[Result], key: str) -> dict[str, Counter[str]]:
    """Outcome counts per variant (`key="variant"`) or per language (`key="language"`)."""
    table: dict[str, Counter[str]] = {}
    for result in results:
        table.setdefault(getattr(result.case, key), Counter())[result.outcome] += 1
    order = VARIANTS if key == "variant" else sorted(table)
    return {name: table[name] for name in order if name in table}


def markdown_table(table: dict[str, Counter[str]], title: str) -> str:
    """One Markdown table: a row per name, a column per outcome, and a total row."""
    def row(name: str, counts: Counter[str], bold: str = "") -> str:
        cells = [name, *(str(counts[o]) for o in OUTCOMES), str(sum(counts.values()))]
        return "| " + " | ".join(f"{bold}{cell}{bold}" for cell in cells) + " |"

    total: Counter[str] = sum(table.values(), Counter())
    rows = [f"| {title} | exact | refused | wrong | cases |", "| --- | ---: | ---: | ---: | ---: |"]
    return "\n".join(rows + [row(name, counts) for name, counts in table.items()] + [row("all", total, "**")])


def report(results: list[Result], pairs: list[FilePair], seconds: float) -> str:
    """The corpus size and both outcome tables, as Markdown."""
    hunk_ids = {(result.case.pair.name, result.case.hunk) for result in results}
    head = (f"Release-diff corpus: {len(pairs)} file pairs, {len({p.language for p in pairs})} languages, "
            f"{len(hunk_ids)} hunks, {len(results)} cases ({seconds:.1f} s).")
    return "\n\n".join([head, markdown_table(tally(results, "variant"), "variant"),
                        markdown_table(tally(results, "language"), "language")])


def wrong_report(results: list[Result], limit: int = 8) -> str:
    """How many cases ended wrong, per variant, and the first wrong case of each variant (pair,
    hunk, variant and a diff of expected against actual), at most `limit` of them."""
    wrong = [result for result in results if result.outcome == "wrong"]
    per_variant = tally(wrong, "variant")
    firsts = [next(r for r in wrong if r.case.variant == variant) for variant in per_variant][:limit]
    shown = [f"--- {r.case.pair.name} hunk {r.case.hunk} variant {r.case.variant}\n{r.detail}" for r in firsts]
    counts = ", ".join(f"{variant} {counts['wrong']}" for variant, counts in per_variant.items())
    return f"{len(wrong)} wrong case(s) ({counts}); the first of each variant:\n\n" + "\n\n".join(shown)


def evaluate(work: Path) -> tuple[list[FilePair], list[Result], float]:
    """Load the corpus, build every case and run it under `work`."""
    began = time.perf_counter()
    pairs = load_pairs()
    results = run_all(build_cases(pairs), work)
    return pairs, results, time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    """Print the outcome tables as Markdown; with `--wrong N`, also the first N wrong cases."""
    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory() as temp:
        pairs, results, seconds = evaluate(Path(temp))
    print(report(results, pairs, seconds))
    if argv[:1] == ["--wrong"]:
        print("\n" + wrong_report(results, int(argv[1]) if len(argv) > 1 else 8))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
