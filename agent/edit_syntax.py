"""What the grammar of a file says about an edit (tree-sitter, through `repo_index.languages`).

Three questions: does the file still parse after the edit (a file that parsed cleanly before and
has an error after is a failed block); does an elided SEARCH stay inside one syntactic unit (a
`...` may stand for lines of the function, class or block its preceding line is in, never run on
past its end into the next one); and is a bare `...` line in a Python REPLACE a stub body (real
code) rather than a stand-in for elided lines.
Files in a language with no grammar fall back to indentation for the unit question.
"""

from __future__ import annotations

from dataclasses import dataclass

from tree_sitter import Node, Parser, Tree

from v4.agent.edit_blocks import indent_of
from v4.repo_index.languages import detect_language, grammar, is_parsed


@dataclass(frozen=True)
class SyntaxProblem:
    """The first place a parse failed: a 0-based row and the line's text."""

    row: int
    text: str


class FileSyntax:
    """Parses one file's versions in its language; every method is a no-op for unparsed languages."""

    def __init__(self, path: str, text: str) -> None:
        language = detect_language(path, text[:400])
        self.path = path
        self.language = language
        self._parser = Parser(grammar(language)) if is_parsed(language) else None

    @property
    def parsed(self) -> bool:
        return self._parser is not None

    def tree(self, text: str) -> Tree | None:
        return self._parser.parse(text.encode("utf-8")) if self._parser is not None else None

    def problem(self, text: str) -> SyntaxProblem | None:
        """The first syntax error in `text`, if its language is parsed and it has one."""
        tree = self.tree(text)
        if tree is None or not tree.root_node.has_error:
            return None
        node = _first_error(tree.root_node)
        row = node.start_point.row if node is not None else 0
        lines = text.split("\n")
        return SyntaxProblem(row, lines[row].strip() if row < len(lines) else "")

    def within_one_unit(self, lines: list[str], tree: Tree | None, before: int, after: int) -> bool:
        """True when the lines strictly between rows `before` and `after` (what a `...` stands for)
        stay inside the innermost construct that runs on past row `before` (the function whose
        header or body line precedes the `...`), and that construct is not the whole file. Without a
        grammar, every one of those lines must be indented deeper than row `before`."""
        gap = [row for row in range(before + 1, after) if lines[row].strip()]
        if not gap:
            return True
        if tree is None:
            depth = len(indent_of(lines[before]))
            return all(len(indent_of(lines[row])) > depth for row in gap)
        node = _node_on_row(tree, lines, before)
        while node is not None and node.end_point.row <= before:
            node = node.parent
        if node is None or node.parent is None:
            return False
        last = lines[gap[-1]].rstrip()
        return (node.end_point.row, node.end_point.column) >= (gap[-1], len(last.encode("utf-8")))


def is_stub_body(language: str, replacement: list[str], at: int, following: str | None) -> bool:
    """True when the bare `...` at `replacement[at]` is a Python block's whole body (a stub), e.g.
    `def f(self) -> int:` then `...`, with nothing more in that block."""
    if language != "python" or replacement[at].strip() != "...":
        return False
    header = next((line for line in reversed(replacement[:at]) if line.strip()), None)
    if header is None or not header.rstrip().endswith(":"):
        return False
    depth = len(indent_of(header))
    if len(indent_of(replacement[at])) <= depth:
        return False
    after = next((line for line in replacement[at + 1:] if line.strip()), following)
    return after is None or len(indent_of(after)) <= depth


def _node_on_row(tree: Tree, lines: list[str], row: int) -> Node:
    line = lines[row].rstrip()
    start = len(indent_of(line).encode("utf-8"))
    end = max(len(line.encode("utf-8")), start)
    node = tree.root_node.descendant_for_point_range((row, start), (row, end))
    return node if node is not None else tree.root_node


def _first_error(node: Node) -> Node | None:
    """The first ERROR or MISSING node, in document order."""
    if node.is_error or node.is_missing:
        return node
    for child in node.children:
        if child.has_error or child.is_missing:
            found = _first_error(child)
            if found is not None:
                return found
    return None
