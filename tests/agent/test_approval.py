"""The approval point: globs and remembered prefixes are matched per simple command, and nothing that
cannot be split the way bash splits it gets through."""

from __future__ import annotations

import pytest

from v4.agent.approval import (AllowCommands, Answer, AskUser, DenyAll, RememberedPrefixes, UnsplittableCommand,
                               command_prefix, split_commands)

SMUGGLED = [
    "pytest; rm -rf ~",
    "pytest;rm -rf ~",
    "pytest && rm -rf ~",
    "pytest || rm -rf ~",
    "pytest | sh",
    "pytest |& sh",
    "pytest & rm -rf ~",
    "pytest $(rm -rf ~)",
    'pytest "$(rm -rf ~)"',
    "pytest `rm -rf ~`",
    "pytest '`rm -rf ~`'",
    "pytest\nrm -rf ~",
    "pytest\r\nrm -rf ~",
    "pytest #comment\nrm -rf ~",
    "pytest <(rm -rf ~)",
    "pytest >(rm -rf ~)",
    "(rm -rf ~)",
    "pytest; (rm -rf ~)",
    "pytest ${x:-$(rm -rf ~)}",
    'pytest "${x:-"}";rm -rf ~;"}"',
    "pytest $'\\''; rm -rf ~ #'",
    "pytest <<EOF\nrm -rf ~\nEOF",
    "pytest \"unterminated",
    "pytest >; rm -rf ~",
    "x=1; rm -rf ~",
    "",
    "   ",
]


@pytest.mark.parametrize("command", SMUGGLED)
def test_a_glob_cannot_be_smuggled_past(command: str) -> None:
    decision = AllowCommands(["pytest*"]).decide(command)
    assert not decision.allowed and decision.reason


@pytest.mark.parametrize("command", ["pytest", "pytest -q tests/test_x.py", "pytest -q 2>&1", "pytest; pytest -x",
                                     "pytest -k 'a or b'", 'pytest -k "x;y"'])
def test_commands_whose_every_part_matches_run(command: str) -> None:
    assert AllowCommands(["pytest*"]).decide(command).allowed


def test_each_part_may_match_a_different_glob() -> None:
    policy = AllowCommands(["pytest*", "git status*"])
    assert policy.decide("git status --short && pytest -q").allowed
    denied = policy.decide("git status && git push")
    assert not denied.allowed and "`git push` matches none of the allowed patterns" in denied.reason


def test_the_glob_matches_the_whole_simple_command() -> None:
    assert not AllowCommands(["pytest"]).decide("pytest -q").allowed
    assert not AllowCommands(["git status"]).decide("git statusx").allowed
    assert AllowCommands(["echo *"]).decide('echo "a; b" | cat').allowed is False
    assert AllowCommands(["echo *", "cat"]).decide('echo "a; b" | cat').allowed


def test_deny_all_denies_everything() -> None:
    decision = DenyAll().decide("ls")
    assert not decision.allowed and "--allow-commands" in decision.reason


def test_allow_commands_needs_patterns() -> None:
    with pytest.raises(ValueError):
        AllowCommands([])
    with pytest.raises(ValueError):
        AllowCommands(["pytest*", " "])


@pytest.mark.parametrize("command, pieces", [
    ("a b; c", [["a", "b"], ["c"]]),
    ("a 'b; c'", [["a", "b; c"]]),
    ("a\nb\n", [["a"], ["b"]]),
    ("a 2>&1 > log", [["a", "2", ">&", "1", ">", "log"]]),
    ('grep "f(x)" file', [["grep", "f(x)", "file"]]),
    ("a # note", [["a", "#", "note"]]),
])
def test_split_commands(command: str, pieces: list[list[str]]) -> None:
    assert split_commands(command) == pieces


@pytest.mark.parametrize("command", ["a `b`", "a $(b)", "a <<X", "(a)", "a >| b ;> c", "a\0b"])
def test_split_commands_refuses(command: str) -> None:
    with pytest.raises(UnsplittableCommand):
        split_commands(command)


@pytest.mark.parametrize("command, prefix", [
    ("git status --short", ("git", "status")),
    ("pytest -q tests/x.py", ("pytest",)),
    ("make test", ("make", "test")),
    ("ls src/", ("ls",)),
    ("python -m pytest -q", ("python", "-m", "pytest", "-q")),
    ("bash -c 'rm -rf ~'", ("bash", "-c", "rm -rf ~")),
    ("git status; ls", ()),
    ("a $(b)", ()),
])
def test_command_prefix(command: str, prefix: tuple[str, ...]) -> None:
    assert command_prefix(command) == prefix


def test_a_remembered_prefix_covers_longer_commands_only_word_by_word() -> None:
    remembered = RememberedPrefixes()
    remembered.remember(("git", "status"))
    assert remembered.covers("git status")
    assert remembered.covers("git status --short")
    assert remembered.covers("git status && git status -s")
    assert not remembered.covers("git stash")
    assert not remembered.covers("git statusx")
    assert not remembered.covers("git status; rm -rf ~")
    assert not remembered.covers("git status $(rm -rf ~)")
    with pytest.raises(ValueError):
        remembered.remember(())


def test_ask_user_asks_until_told_always() -> None:
    asked: list[tuple[str, tuple[str, ...]]] = []
    answers = iter([Answer.ONCE, Answer.ALWAYS, Answer.DENY])

    def ask(command: str, prefix: tuple[str, ...]) -> Answer:
        asked.append((command, prefix))
        return next(answers)

    policy = AskUser(ask)
    assert policy.decide("git status").allowed
    assert policy.decide("git status -s").allowed  # asked: ONCE remembered nothing
    assert policy.decide("git status --short").allowed  # covered by the ALWAYS answer, not asked
    denied = policy.decide("git push")
    assert not denied.allowed and denied.reason == "the user denied it"
    assert asked == [("git status", ("git", "status")), ("git status -s", ("git", "status")),
                     ("git push", ("git", "push"))]
    assert policy.remembered.prefixes == [("git", "status")]


def test_always_without_a_prefix_allows_once() -> None:
    policy = AskUser(lambda command, prefix: Answer.ALWAYS)
    assert policy.decide("ls; pwd").allowed
    assert policy.remembered.prefixes == []
