"""The values the edit protocol passes around: parsed blocks, planned file changes and their errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["replace", "create", "delete"]


@dataclass(frozen=True)
class EditBlock:
    """One edit from a response; `index` is its 0-based position among the response's blocks.

    `readings` is empty unless the body held more than one line that could be the `=======`
    divider; then it lists every (search, replace) split, and planning picks the one the file
    supports (`search`/`replace` hold the first).
    """

    path: str
    search: str
    replace: str
    kind: Kind
    index: int
    readings: tuple[tuple[str, str], ...] = ()


class EditError(ValueError):
    """An edit that cannot be parsed or applied; the message is feedback for the model.

    `errors` holds one error per failing block when several are reported at once (itself otherwise);
    `block_index` and `path` are those of the first.
    """

    def __init__(self, message: str, block_index: int | None = None, path: str | None = None,
                 errors: Sequence[EditError] = ()) -> None:
        super().__init__(message)
        self.block_index = block_index
        self.path = path
        self.errors: tuple[EditError, ...] = tuple(errors) or (self,)

    @property
    def message(self) -> str:
        return str(self.args[0])


@dataclass
class FileChange:
    """A file's content before and after the edits; None means the file is absent (or deleted)."""

    path: str
    before: str | None
    after: str | None


class BlockFailure(Exception):
    """Why one block does not apply; planning turns it into part of the EditError sent to the model."""


def text_lines(text: str) -> list[str]:
    """`text` split at `\\n`, without the empty string a final newline would leave."""
    return text.split("\n")[:-1] if text.endswith("\n") else (text.split("\n") if text else [])


def indent_of(line: str) -> str:
    """The leading whitespace of `line`."""
    return line[:len(line) - len(line.lstrip())]
