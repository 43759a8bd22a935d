"""The one approval point: whether a command the model asked for may run.

A policy answers `decide(command) -> Decision`; `tools.ToolRunner` asks it before every
`run_command` and runs nothing it refuses. Front ends provide the policy: the CLI builds
`AllowCommands` from `--allow-commands GLOB` (or `DenyAll` without one); the TUI builds an
`AskUser` over its own question (once / always for this command prefix / deny), which remembers
"always" answers in a `RememberedPrefixes` for the rest of the session.

Both the globs and the remembered prefixes are checked against every *simple command* the shell
would run, never the string as a whole, so `pytest*` cannot let through `pytest; rm -rf ~`.
`split_commands` is the rule, and it refuses whatever it cannot split the way bash would:

- separators (`;`, `&`, `&&`, `||`, `|`, `|&`, `;;` and newlines, outside quotes) split the
  command; each piece, its words joined by single spaces, must match on its own;
- command and process substitution (`` `...` ``, `$(...)`, `<(...)`, `>(...)`), ANSI-C quoting
  (`$'...'`, whose `\\'` shlex reads differently from bash), `${...}` and `$[...]` (bash allows
  nested quotes inside, shlex does not), here-documents (`<<`), subshells and groups (`(`, `)`),
  NUL bytes and unterminated quotes are refused outright, wherever they appear (even inside
  quotes: refusing a harmless one costs a question, missing a harmful one costs a shell);
- redirections (`>`, `>>`, `<`, `2>&1`, ...) stay part of their simple command, so a glob must
  allow them; what a redirection can write is the sandbox's business.

A glob is only as narrow as the program it names: `git *` allows `git -c core.pager=...`.
"""

from __future__ import annotations

import fnmatch
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

__all__ = ["AllowCommands", "Answer", "ApprovalPolicy", "AskUser", "Decision", "DenyAll", "RememberedPrefixes",
           "UnsplittableCommand", "command_prefix", "split_commands"]

PUNCTUATION_CHARS = frozenset("();<>|&\n")
SEPARATOR_CHARS = frozenset(";&|\n")
REDIRECTIONS = frozenset({"<", ">", ">>", "<>", ">&", "<&", "&>", "&>>", ">|"})
# Programs that run whatever their arguments say: "always" for them would allow anything.
RUNNERS = frozenset({"sh", "bash", "zsh", "dash", "env", "sudo", "doas", "xargs", "eval", "exec", "command",
                     "builtin", "nohup", "nice", "timeout", "time", "watch", "python", "python3", "node", "perl",
                     "ruby", "php", "uv", "uvx", "npx", "pipx"})
REFUSED_SEQUENCES = (("`", "command substitution (backticks)"), ("$(", "command substitution ($(...))"),
                     ("<(", "process substitution"), (">(", "process substitution"),
                     ("$'", "ANSI-C quoting ($'...')"), ("${", "parameter expansion ${...} (write $NAME)"),
                     ("$[", "arithmetic expansion"), ("<<", "a here-document"), ("\0", "a NUL byte"))


class UnsplittableCommand(ValueError):
    """A command whose simple commands cannot be told apart safely; the message says what is in the way."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a command may run, and why (the reason is shown to the model when it may not)."""

    allowed: bool
    reason: str


class ApprovalPolicy(Protocol):
    """Decides whether the model's command may run; the one point every command goes through."""

    def decide(self, command: str) -> Decision: ...


def split_commands(command: str) -> list[list[str]]:
    """The simple commands bash would run for `command`, each as its words (see the module docstring).

    Raises UnsplittableCommand for what cannot be split safely.
    """
    for sequence, what in REFUSED_SEQUENCES:
        if sequence in command:
            raise UnsplittableCommand(f"it contains {what}, which cannot be checked word by word")
    lexer = shlex.shlex(command, posix=True, punctuation_chars="".join(sorted(PUNCTUATION_CHARS)))
    lexer.whitespace = " \t"  # a newline separates commands, as in bash
    lexer.whitespace_split = True
    lexer.commenters = ""  # shlex would swallow a comment's newline, and the command after it with it
    try:
        tokens = list(lexer)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise UnsplittableCommand(f"it cannot be parsed ({exc})") from None
    commands: list[list[str]] = [[]]
    for token in tokens:
        if not token or not set(token) <= PUNCTUATION_CHARS:
            commands[-1].append(token)  # a word (quoted punctuation mixed with text stays one)
        elif set(token) <= SEPARATOR_CHARS:
            commands.append([])  # a quoted `";"` alone splits too: one more piece that must match
        elif token in REDIRECTIONS:
            commands[-1].append(token)
        elif set(token) & {"(", ")"}:
            raise UnsplittableCommand("it contains a subshell, group or function definition `( ... )`")
        else:
            raise UnsplittableCommand(f"it contains the operator `{token}`, which is not checked")
    found = [words for words in commands if words]
    if not found:
        raise UnsplittableCommand("it is empty")
    return found


def _joined(words: Sequence[str]) -> str:
    return " ".join(words)


class DenyAll:
    """The headless default without `--allow-commands`: nothing runs."""

    def decide(self, command: str) -> Decision:
        return Decision(False, "no command may run in this session (the user allowed none; "
                               "v4 --allow-commands GLOB allows matching ones)")


class AllowCommands:
    """Headless: a command runs only when each of its simple commands matches one of the globs
    (fnmatch, case-sensitive, over the words joined by single spaces)."""

    def __init__(self, globs: Iterable[str]) -> None:
        self.globs = tuple(globs)
        if not self.globs or any(not glob.strip() for glob in self.globs):
            raise ValueError(f"--allow-commands needs non-empty patterns, got {list(self.globs)!r}")

    def decide(self, command: str) -> Decision:
        try:
            pieces = split_commands(command)
        except UnsplittableCommand as exc:
            return Decision(False, f"{exc}; only plain commands are checked against --allow-commands")
        for words in pieces:
            text = _joined(words)
            if not any(fnmatch.fnmatchcase(text, glob) for glob in self.globs):
                return Decision(False, f"`{text}` matches none of the allowed patterns "
                                       f"({', '.join(self.globs)})")
        return Decision(True, f"matches --allow-commands ({', '.join(self.globs)})")


def command_prefix(command: str, max_words: int = 2) -> tuple[str, ...]:
    """The prefix an "always" answer offers: the first words up to the first option or path-like
    argument, at most `max_words` (`git status --short` -> `git status`, `pytest -q x` -> `pytest`).
    For a program that runs its arguments (`python`, `bash`, `env`, ...) it is the whole command, so
    "always" means this command again. Empty when the command cannot be split or is several
    commands: the front end then offers only once or deny."""
    try:
        pieces = split_commands(command)
    except UnsplittableCommand:
        return ()
    if len(pieces) != 1:
        return ()
    words = pieces[0]
    if words[0].rsplit("/", 1)[-1] in RUNNERS or words[0].rsplit("/", 1)[-1].startswith("python"):
        return tuple(words)
    prefix: list[str] = []
    for word in words[:max_words]:
        if prefix and (word.startswith("-") or "/" in word or "." in word or "=" in word or word in REDIRECTIONS):
            break
        prefix.append(word)
    return tuple(prefix)


class RememberedPrefixes:
    """The session's "always for this command prefix" answers: a prefix is the first N words the
    user approved, so approving `git status` lets `git status --short` run and not `git stash`."""

    def __init__(self) -> None:
        self.prefixes: list[tuple[str, ...]] = []

    def remember(self, prefix: Sequence[str]) -> None:
        """Allow from now on every simple command whose first words are `prefix`."""
        words = tuple(prefix)
        if not words or any(not word for word in words):
            raise ValueError(f"a command prefix needs at least one non-empty word, got {list(words)!r}")
        if words not in self.prefixes:
            self.prefixes.append(words)

    def covers(self, command: str) -> bool:
        """Whether every simple command of `command` starts with a remembered prefix."""
        try:
            pieces = split_commands(command)
        except UnsplittableCommand:
            return False
        return all(any(tuple(words[:len(p)]) == p for p in self.prefixes) for words in pieces)


class Answer(Enum):
    """The user's answer to "may this command run?"."""

    ONCE = "once"
    ALWAYS = "always"  # this command prefix, for the rest of the session
    DENY = "deny"


class AskUser:
    """Interactive: commands under a remembered prefix run; any other is put to the user through
    `ask(command, prefix)` (the front end's question; it may block until the user answers)."""

    def __init__(self, ask: Callable[[str, tuple[str, ...]], Answer],
                 remembered: RememberedPrefixes | None = None) -> None:
        self.ask = ask
        self.remembered = remembered if remembered is not None else RememberedPrefixes()

    def decide(self, command: str) -> Decision:
        if self.remembered.covers(command):
            return Decision(True, "allowed for this session by command prefix")
        prefix = command_prefix(command)
        answer = self.ask(command, prefix)
        if answer is Answer.ALWAYS and prefix:
            self.remembered.remember(prefix)
            return Decision(True, f"the user allowed `{' '.join(prefix)}` for this session")
        if answer in (Answer.ONCE, Answer.ALWAYS):
            return Decision(True, "the user allowed it")
        return Decision(False, "the user denied it")
