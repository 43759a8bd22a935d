"""The `v4` command line: the index command, usage errors, and the help listing every command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from v4.cli.main import main


def test_index_json_lists_files_in_context_order(order_repo: Path, capsys) -> None:
    assert main(["index", str(order_repo), "--json", "--budget", "500000"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) >= {"root", "budget", "total_tokens", "elapsed_s", "files", "skipped"}
    assert document["budget"] == 500_000
    assert document["files"][0]["path"] == "README.md"
    first = document["files"][0]
    assert set(first) >= {"path", "language", "mode", "tokens", "sha256"}
    assert len(first["sha256"]) == 64 and first["mode"] == "full"
    assert document["total_tokens"] == sum(f["tokens"] for f in document["files"])


def test_index_table_is_readable(order_repo: Path, capsys) -> None:
    assert main(["index", str(order_repo)]) == 0
    out = capsys.readouterr().out
    assert "py/app/store.py" in out and "of 1,000,000 tokens" in out


def test_index_of_a_file_is_an_error_not_a_crash(tmp_path: Path, capsys) -> None:
    (tmp_path / "f.txt").write_text("x")
    assert main(["index", str(tmp_path / "f.txt")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_index_with_a_missing_model_tokenizer_is_an_error(order_repo: Path, tmp_path: Path, capsys) -> None:
    assert main(["index", str(order_repo), "--model", str(tmp_path / "no-model")]) == 1
    assert "no-model" in capsys.readouterr().err


def test_watch_without_a_model_is_a_usage_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("V4_MODEL", raising=False)
    assert main(["watch", "--repo", str(tmp_path)]) == 2
    assert "choose one model" in capsys.readouterr().err


def test_no_command_is_the_tui_which_needs_a_git_repository(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--replay", str(tmp_path / "answers.json")]) == 2
    assert "not a git repository" in capsys.readouterr().err


def test_the_tui_takes_the_backend_options() -> None:
    from v4.cli.main import build_parser

    args = build_parser().parse_args(["--replay", "a.json", "--budget", "100"])
    assert (args.command, str(args.replay), args.budget) == (None, "a.json", 100)
    assert build_parser().parse_args(["index", "--budget", "5"]).budget == 5  # commands keep their own


def test_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("index", "model", "refactor", "review", "undo", "watch", "serve"):
        assert command in out


# --- issue 24: options before the command, misspelt options, help for every option ---------------

def _parse(argv: list[str]) -> object:
    from v4.cli.main import build_parser, hoist_options

    parser = build_parser()
    args, extras = parser.parse_known_args(hoist_options(parser, argv))
    assert extras == []
    return args


def test_options_before_the_command_are_the_commands_own(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("V4_MODEL", raising=False)
    args = _parse(["--model", str(tmp_path), "generate", "hi"])
    assert (args.command, args.model, args.text) == ("generate", tmp_path, "hi")
    args = _parse(["--budget", "7", "--include-secrets", "refactor", "do it", "--replay", "r.json"])
    assert (args.command, args.budget, args.include_secrets, args.instruction) == ("refactor", 7, True, "do it")


def test_an_option_before_the_command_is_used_by_it(order_repo: Path, capsys) -> None:
    assert main(["--budget", "321", "index", str(order_repo), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["budget"] == 321


def test_an_option_the_command_does_not_take_is_an_error_naming_it(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--endpoint", "http://127.0.0.1:9", "index", "."])
    assert exited.value.code == 2
    assert "--endpoint (does not apply to `v4 index`)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["--modle", "x"], "unrecognized option --modle (did you mean --model?)"),
    (["index", "--budgt", "5"], "--budgt (did you mean --budget?)"),
    (["store", "--jsn", "verify"], "--jsn (did you mean --json?)"),
])
def test_a_misspelt_option_is_reported_as_itself_with_a_suggestion(argv: list[str], expected: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert expected in err and "invalid choice" not in err


def test_model_from_the_environment_for_every_model_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("V4_MODEL", str(tmp_path))
    for argv in (["generate", "hi"], ["serve"], ["refactor", "x"], ["prefill"], ["watch"], []):
        assert Path(_parse(argv).model) == tmp_path, argv


def test_every_option_has_help_text() -> None:
    from v4.cli.main import build_parser

    parser = build_parser()
    missing = []
    for name, sub in [("v4", parser), *parser.commands.items()]:
        parsers = [sub] + [p for action in sub._actions if isinstance(action, argparse._SubParsersAction)
                           for p in action.choices.values()]
        for each in parsers:
            missing += [f"{each.prog}: {action.option_strings or action.dest}" for action in each._actions
                        if not action.help and not isinstance(action, argparse._SubParsersAction)]
    assert missing == []
