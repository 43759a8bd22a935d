"""tree-sitter parse of one file into tags (definitions, references), imports and outline lines.

The tags queries (`queries/<language>.scm`) follow one capture convention:
- `@definition.<kind>` on a definition node, with `@name` on its name in the same pattern;
  the node's `body` field, if any, marks where the signature ends (for outlines).
- `@reference.<kind>` on a use, with `@name` on the referenced identifier.
- `@import` on an import statement, `@import.source` on the module it names (quotes are stripped),
  and optionally `@import.name` on names it imports (Python's `from a import b`: `b` may be a module).
- `@import` with `@import.submodule` on the name of a module declared in another file (Rust `mod foo;`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from tree_sitter import Node, Parser, QueryCursor

from .languages import grammar, tags_query

# A definition's signature is at most this many lines in an outline (long parameter lists are cut).
MAX_SIGNATURE_LINES = 8


@dataclass(frozen=True, slots=True)
class Tag:
    """A definition or a reference of a name, at a 1-based line of a file."""

    path: str
    line: int
    name: str
    kind: str  # "def" | "ref"
    subkind: str  # "function", "class", "call", "type", ...


@dataclass(frozen=True, slots=True)
class Import:
    """One import: the module as written (`a.b`, `./util`, `stdio.h`) and any names it imports."""

    source: str
    names: tuple[str, ...]
    line: int
    kind: str = "import"  # "import" | "mod" (a Rust `mod foo;` declaration)


@dataclass(frozen=True, slots=True)
class FileSymbols:
    """What the parse of one file yields; `outline` holds 0-based inclusive line ranges of signatures."""

    tags: tuple[Tag, ...]
    imports: tuple[Import, ...]
    outline: tuple[tuple[int, int], ...]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FileSummary:
    """What ordering, ranking and outlines need of a parse: names, not every tag with its line.

    This, not the tag list, crosses process boundaries and goes into the cache: a large file has
    tens of thousands of tags but a few hundred distinct names.
    """

    definitions: tuple[tuple[str, str], ...]  # (name, kind), sorted
    references: tuple[tuple[str, int], ...]  # (name, count), sorted
    bare_references: tuple[str, ...]  # names used other than as a member (`x.name`), sorted
    imports: tuple[Import, ...]
    outline: tuple[tuple[int, int], ...]
    error: str | None = None


EMPTY_SUMMARY = FileSummary((), (), (), (), ())
MEMBER_REFERENCE_KINDS = frozenset({"member", "method", "field"})


def summarize(symbols: FileSymbols) -> FileSummary:
    """Reduce a parse to its distinct names (see FileSummary)."""
    counts: dict[str, int] = {}
    bare: set[str] = set()
    definitions: set[tuple[str, str]] = set()
    for tag in symbols.tags:
        if tag.kind == "def":
            definitions.add((tag.name, tag.subkind))
        else:
            counts[tag.name] = counts.get(tag.name, 0) + 1
            if tag.subkind not in MEMBER_REFERENCE_KINDS:
                bare.add(tag.name)
    return FileSummary(tuple(sorted(definitions)), tuple(sorted(counts.items())), tuple(sorted(bare)),
                       symbols.imports, symbols.outline, symbols.error)


class ParseError(Exception):
    """A grammar failed on a file; the file is still included, unparsed."""


def parse_source(path: str, language: str, source: bytes) -> FileSymbols:
    """Parse `source` as `language` and extract its tags, imports and outline ranges.

    Raises ParseError when the grammar cannot parse the file at all.
    """
    try:
        tree = Parser(grammar(language)).parse(source)
        matches = QueryCursor(tags_query(language)).matches(tree.root_node)
    except Exception as exc:  # a grammar or query failure: plain ValueError/OSError/... from the binding
        raise ParseError(f"{path}: tree-sitter failed: {exc}") from exc
    tags: list[Tag] = []
    imports: list[Import] = []
    outline: list[tuple[int, int]] = []
    for _, captures in matches:
        for capture, nodes in captures.items():
            if capture.startswith("definition."):
                name_nodes = captures.get("name")
                if name_nodes:
                    name = _text(name_nodes[0])
                    tags.append(Tag(path, name_nodes[0].start_point[0] + 1, name, "def", capture[11:]))
                outline.extend(_signature(node, source) for node in nodes)
            elif capture.startswith("reference."):
                for name_node in captures.get("name", ()):
                    tags.append(Tag(path, name_node.start_point[0] + 1, _text(name_node), "ref", capture[10:]))
            elif capture == "import":
                sources = captures.get("import.source", ())
                names = tuple(_text(n) for n in captures.get("import.name", ()))
                for source_node in sources:
                    spec = _unquote(_text(source_node))
                    if spec:
                        imports.append(Import(spec, names, source_node.start_point[0] + 1))
                for module_node in captures.get("import.submodule", ()):
                    imports.append(Import(_text(module_node), (), module_node.start_point[0] + 1, "mod"))
    tags = sorted(set(tags), key=lambda t: (t.line, t.kind, t.name, t.subkind))
    imports = sorted(set(imports), key=lambda i: (i.line, i.source, i.names))
    return FileSymbols(tuple(tags), tuple(imports), _merge(outline))


def _text(node: Node) -> str:
    return node.text.decode("utf-8", "replace") if node.text is not None else ""


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] in "\"'`<" and text[-1] in "\"'`>":
        text = text[1:-1]
    return text.strip()


def _signature(node: Node, source: bytes) -> tuple[int, int]:
    """Line range of a definition's signature: from its first line to where its body starts."""
    first = node.start_point[0]
    body = node.child_by_field_name("body")
    if body is None:
        last = node.end_point[0]
    else:
        body_row, body_col = body.start_point
        line_start = source.rfind(b"\n", 0, body.start_byte) + 1
        # `def f(a,\n b):` + body on the next line ends the signature one line above the body;
        # `int f(int a) {` keeps the line where the body opens.
        last = body_row if source[line_start : line_start + body_col].strip() else body_row - 1
    return first, max(first, min(last, first + MAX_SIGNATURE_LINES - 1))


def _merge(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


# A process pool pays for itself only past this many files (start-up costs ~0.3 s per worker).
MIN_FILES_PER_WORKER = 200


def parse_many(jobs: list[tuple[str, str, bytes]], progress: Callable[[int], None] | None = None
               ) -> list[FileSummary | ParseError]:
    """`parse_source` + `summarize` over (path, language, source) jobs, across processes when it pays.

    tree-sitter holds the GIL while it parses, so threads would not help; processes do. Results
    come back in job order; a failure comes back as its ParseError instead of raising.
    """
    workers = min(os.cpu_count() or 1, len(jobs) // MIN_FILES_PER_WORKER)
    if workers <= 1:
        results = []
        for job in jobs:
            results.append(_parse_job(job))
            if progress:
                progress(len(results))
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # forkserver: never fork a process whose tokenizer, watcher or UI threads are running.
    context = multiprocessing.get_context("forkserver")
    # Largest files first, in small chunks, so no worker is left with the big ones at the end.
    by_size = sorted(range(len(jobs)), key=lambda i: -len(jobs[i][2]))
    results: list[FileSummary | ParseError | None] = [None] * len(jobs)
    done = 0
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for i, result in zip(by_size, pool.map(_parse_job, [jobs[i] for i in by_size], chunksize=4)):
                results[i] = result
                done += 1
                if progress:
                    progress(done)
    except (BrokenProcessPool, OSError):
        # A worker could not start (e.g. a __main__ without a main guard): finish in this process.
        for i in by_size:
            if results[i] is None:
                results[i] = _parse_job(jobs[i])
                done += 1
                if progress:
                    progress(done)
    return results  # type: ignore[return-value]


def _parse_job(job: tuple[str, str, bytes]) -> FileSummary | ParseError:
    try:
        return summarize(parse_source(*job))
    except ParseError as exc:
        return exc
