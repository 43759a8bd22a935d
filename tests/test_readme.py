"""The README is the newcomer's path (issue 24): it names only files that exist, no internal issue
tags, every command of the command table, and how `v4` gets on the PATH."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_markdown_file_the_readme_names_exists() -> None:
    user_files = {"AGENTS.md", "CLAUDE.md"}  # the instruction files v4 reads from the user's repository
    named = set(re.findall(r"\b([\w./-]+\.md)\b", README)) - {"README.md"} - user_files
    assert sorted(n for n in named if not list(ROOT.rglob(Path(n).name))) == []


def test_no_internal_issue_tags() -> None:
    assert re.findall(r"\[(?:perf|kernels|multi-gpu|engine|packaging|edits|workspace|hardening|layout|ux|agent|"
                      r"sessions|decode|workstation)\]", README) == []


def test_every_command_is_in_the_command_table() -> None:
    from v4.cli.commands import COMMANDS

    table = README[README.index("## The command line"):README.index("## Architecture")]
    assert [c.name for c in COMMANDS if f"`v4 {c.name}" not in table] == []


def test_getting_started_comes_before_the_details_and_says_where_v4_is() -> None:
    assert README.index("## Getting started") < README.index("## Set-up in detail") < README.index("## Architecture")
    assert ".venv/bin/v4" in README[:README.index("## Set-up in detail")]
