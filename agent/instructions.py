"""Project instructions (issue 26): `AGENTS.md`, or `CLAUDE.md` where a directory has no `AGENTS.md`,
read from disk whether git tracks it or not.

The root's file goes in the system message (`prompts.system_message`), before the repository, so the
repository's segments stay one stable prefix. A directory below the root with its own file adds to the
root's, as Codex's nearest-directory files do: `Session.run` puts those of the directories of the files
a turn names (`--files`, or paths in the request) at the head of that user message, once per conversation.
A file that resolves outside the repository (a symlink) is refused, one that is not UTF-8 is refused with
a warning, and a long one is cut at `MAX_INSTRUCTION_BYTES` with a note saying so.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

INSTRUCTION_NAMES = ("AGENTS.md", "CLAUDE.md")  # the first a directory has is its file
MAX_INSTRUCTION_BYTES = 32_768  # Codex's default project_doc_max_bytes
NESTED_HEADER = "# Project instructions for {directory}/ (from {path})"
_PATH_WORD = re.compile(r"[\w.\-/]+")  # a word of a request that may name a path


@dataclass(frozen=True, slots=True)
class Instructions:
    """The instruction files found, as one text, and what the user should be told about the others."""

    text: str = ""  # "" when there is none: the system message is then the one v4 always sent
    paths: tuple[str, ...] = ()  # repository-relative, in the order of `text`
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def warning(self) -> str | None:
        """The warnings as one line for the user, None when there are none."""
        return "; ".join(self.warnings) or None


def root_instructions(root: Path) -> Instructions:
    """The repository root's instruction file (AGENTS.md, else CLAUDE.md), read as described above."""
    found = _read_dir(Path(root).resolve(), "")
    if found is None:
        return Instructions()
    rel, text, warning = found
    return Instructions(text, (rel,) if text else (), (warning,) if warning else ())


def nested_instructions(root: Path, files: Iterable[str], sent: Iterable[str] = ()) -> Instructions:
    """The instruction files of the directories (below the root) that hold `files` (repository-relative),
    shallow before deep, each under a NESTED_HEADER line; files in `sent` are left out (already shown)."""
    root = Path(root).resolve()
    directories: set[str] = set()
    for name in files:
        parts = posixpath.normpath(name.replace("\\", "/")).split("/")
        if not parts or parts[0] in ("", "..", "."):
            continue
        for depth in range(1, len(parts)):  # the file's own directory and those above it, not the root
            directories.add("/".join(parts[:depth]))
    texts: list[str] = []
    paths: list[str] = []
    warnings: list[str] = []
    done = set(sent)
    for directory in sorted(directories, key=lambda d: (d.count("/"), d)):
        found = _read_dir(root, directory)
        if found is None or found[0] in done:
            continue
        rel, text, warning = found
        if warning:
            warnings.append(warning)
        if text:
            texts.append(NESTED_HEADER.format(directory=directory, path=rel) + "\n\n" + text)
            paths.append(rel)
    return Instructions("\n\n".join(texts), tuple(paths), tuple(warnings))


def sent_instructions(messages: Iterable[str]) -> set[str]:
    """The nested instruction files already in a conversation (from their header lines)."""
    header = re.compile(r"^# Project instructions for .+/ \(from (.+)\)$", re.MULTILINE)
    return {m.group(1) for text in messages for m in header.finditer(text)}


def named_paths(root: Path, text: str) -> list[str]:
    """The words of `text` that name a file or directory in the repository (repository-relative)."""
    root = Path(root).resolve()
    named: list[str] = []
    for word in _PATH_WORD.findall(text):
        word = word.strip(".")
        if "/" not in word or word.startswith("/") or ".." in word.split("/"):
            continue
        if (root / word).exists() and word not in named:
            named.append(word)
    return named


def _read_dir(root: Path, directory: str) -> tuple[str, str, str | None] | None:
    """(relative path, text, warning) of the instruction file of `directory`, None when it has none."""
    for name in INSTRUCTION_NAMES:
        rel = f"{directory}/{name}" if directory else name
        path = root / rel
        if not path.is_file() and not path.is_symlink():
            continue
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return rel, "", f"{rel} was not read: it is a broken link"
        if not real.is_relative_to(root) or not real.is_file():
            return rel, "", f"{rel} was not read: it points outside the repository"
        try:
            data = real.read_bytes()
        except OSError as exc:
            return rel, "", f"{rel} was not read: {exc.strerror or exc}"
        cut = len(data) > MAX_INSTRUCTION_BYTES
        try:
            text = data[:MAX_INSTRUCTION_BYTES].decode("utf-8", errors="strict" if not cut else "ignore")
            if cut:
                data.decode("utf-8")  # the whole file must be UTF-8, not just the part kept
        except UnicodeDecodeError:
            return rel, "", f"{rel} was not read: it is not UTF-8 text"
        text = text.strip()
        if cut:
            text += (f"\n\n[{rel} is {len(data):,} bytes; only its first {MAX_INSTRUCTION_BYTES:,} are shown]")
        return rel, text, None
    return None
