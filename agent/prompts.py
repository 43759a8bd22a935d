"""Every text v4 sends the model on its own behalf, in one place: the system message's rules and
edit format, the requests made from AI comments and by /init, and the feedback after a failed turn.

The system message is built here too (`system_message`): `v4 prefill` and every session build it the
same way, so a prefilled state in the prefix-state store is found by the next session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .chat_format import Message

if TYPE_CHECKING:
    from v4.repo_index.plan import Segment

SYSTEM_RULES = """You are v4, a coding agent working in the user's repository. The whole repository (or an
outline of its less central files) follows, each file under a header line `==> path <==`, dependencies
before the files that use them. Answer the user's request. To change files, use only the edit blocks
described below; text outside edit blocks is for the user and is never applied."""

EDIT_FORMAT_PROMPT = """\
# Editing files

To change files, reply with edit blocks. Text outside edit blocks is never applied.

Edit a file: its path (relative to the repository root) alone on a line, then a fenced block with a \
SEARCH section copying the current lines exactly and a REPLACE section with the lines that replace them:

app/util.py
```python
<<<<<<< SEARCH
def add(a, b):
    return a + b
=======
def add(a: int, b: int) -> int:
    return a + b
>>>>>>> REPLACE
```

Create a file: leave SEARCH empty and put the whole file in REPLACE (the file must not exist yet):

app/version.py
```python
<<<<<<< SEARCH
=======
VERSION = "1.0.0"
>>>>>>> REPLACE
```

Delete a file: one line naming it:

```
<<<<<<< DELETE docs/old_notes.md
```

Rules:
- SEARCH must match exactly one place in the file: copy whole lines with their indentation, \
comments and blank lines, and add nearby lines if the text occurs more than once. Keep blocks small.
- Every block needs its own path line (blocks that follow each other inside one fence share it).
- In a long SEARCH you may replace unchanged lines inside one function or class with a line `...`; \
put a `...` line at the same place in REPLACE and those lines are kept. Anywhere else write lines \
out in full: REPLACE is written literally.
- Several blocks may edit one file; they apply in order, each to the result of the one before.
- To rewrite a whole file, delete it and create it again.
- All blocks apply together or none does; if some fail you will be told which, and why.
"""

# AI comments (agent/watch/ai_comments.py): the marked lines are shown with `█` in the first column.
CHANGE_PROMPT = """I wrote instructions for you as comments in the code, each marked with "AI". They are shown
below (the lines marked █) with the code around them; the files are in the repository above.
Do what the comments ask, with edit blocks. As part of those edits, remove every one of these AI
comments (just the comment: code on the same line stays)."""
ASK_PROMPT = """I wrote questions for you as comments in the code, each marked with "AI". They are shown below
(the lines marked █) with the code around them; the files are in the repository above.
Answer them. Do not change any file: write no edit blocks."""

# /init (agent/init_draft.py): the repository's instruction file, drafted from the repository map.
INIT_PROMPT = """Write the project instructions file for this repository: the notes a coding agent reads before \
it works here (v4 puts the file in its system message). Work from the repository above and the map below, \
and state only facts they show: a command, tool or rule they do not show stays out, however usual it is \
elsewhere.

Cover, each under its own heading, in short bullets (leave a heading out when there is nothing true to say):
- Overview: what the project is and does, in two or three sentences.
- Layout: the main directories and files, and what each holds.
- Build, test and lint: the exact commands, as the Makefile, pyproject.toml, package.json or CI files give \
them; how to run a single test, if that is shown.
- Code style: formatting, naming, typing and docstring rules that the code or its configuration shows.
- Conventions: what a change here must respect (where tests go, layering, how changes are reviewed or \
committed), where the docs or the code show it.

Be concise: under about 80 lines, no generic advice ("write clean code"), no list of every file."""
INIT_CREATE = """Create `{path}` at the repository root with one edit block (SEARCH empty, the whole file in \
REPLACE). Change no other file: this turn may edit only `{path}`."""
INIT_EMPTY = """`{path}` exists at the repository root but is empty: delete it and create it again with the \
whole text, in edit blocks. Change no other file: this turn may edit only `{path}`."""
INIT_IMPROVE = """The repository already has `{path}`; its text follows. Improve it in place with edit blocks \
on `{path}`: correct what the repository contradicts, add what the list above asks for and it lacks, tighten \
what is long, and keep the user's own rules that are still true. Change no other file: this turn may edit \
only `{path}`.

{fence}markdown
{text}
{fence}"""

NO_EDIT_BLOCKS = ("Your answer contained no edit blocks, so nothing was changed. Make the requested change with "
                  "edit blocks in the format described in the system message.")


def edits_not_applied(reason: str) -> str:
    """Feedback after a turn whose edits were refused as a whole (the reason names the blocks)."""
    return f"Your edits were not applied.\n{reason}"


def edits_not_written(reason: str) -> str:
    """Feedback after valid edits could not be written (a file changed meanwhile; nothing was written)."""
    return f"Your edits were not applied: {reason}"


def tests_failed(command: str, exit_code: int, output: str) -> str:
    """Feedback after the test command failed on the applied edits (`output`: its tail)."""
    return (f"The test command `{command}` failed (exit {exit_code}) after your edits:\n"
            f"```\n{output}\n```\nFix the code with edit blocks.")


def tests_timed_out(command: str, timeout_s: float) -> str:
    """Feedback after the test command ran past its time limit."""
    return f"The test command `{command}` timed out after {timeout_s:.0f} s."


def system_message(repository: str, instructions: str = "") -> Message:
    """The session's first message: the rules, the edit format, the project's instructions (its root
    AGENTS.md or CLAUDE.md; none: the section is left out), then the repository. The instructions come
    before the repository because they change less often: the repository's segments stay a cached prefix."""
    project = f"# Project instructions\n\n{instructions}\n\n" if instructions else ""
    return Message("system", f"{SYSTEM_RULES}\n\n{EDIT_FORMAT_PROMPT}\n\n{project}# Repository\n\n{repository}")


def repository_text(segments: Sequence[Segment]) -> str:
    """The repository part of the system message: every included segment, in order."""
    return "\n".join(s.text for s in segments if getattr(s, "mode", "full") != "omitted" and s.text)


# Compaction (agent/compaction.py): the older turns become one summary when the conversation nears the context.
COMPACT_PROMPT = """The conversation is about to be shortened: everything above this message (after the \
repository) will be replaced by the summary you write now, and you will continue from the summary alone. \
Write it for yourself, so that nothing needed to carry on is lost:
- The user's requests, in order, and their preferences and instructions (style, what to avoid, how to work).
- Decisions made, and why; approaches tried and rejected.
- Files read, created or changed (their paths), and what changed in each.
- Errors met (failing tests, refused edits) and how they were resolved, or that they were not.
- Open tasks: what was asked and is not done yet, and the next step.
Write only the summary: plain prose and short bullet lists, no edit blocks, no tool calls. Keep exact names \
(paths, functions, commands). At most about {words} words."""
TURN_CUT_SHORT = "(nothing here: the turn ended before this)"  # closes a turn cut short, for the summary request
COMPACT_ACK = "Understood: I have the summary of our earlier conversation and will continue from it."


def compacted_summary(num_turns: int, summary: str, pending: str) -> str:
    """The user message that replaces `num_turns` summarised turns: a marker saying what happened, the
    model's summary, and v4's pending changes (`pending`: their diffs, already capped; "" when none)."""
    turns = f"{num_turns} turn{'s' if num_turns != 1 else ''}"
    head = (f"Summary of the earlier conversation (compacted by v4: {turns}, and any summary before them, were "
            "replaced by this summary to keep the conversation within the model's context; the repository above "
            "is as it was when the session started).")
    changes = (f"\n\n# v4's pending changes\n\nThese edits were made in this conversation and are not yet "
               f"reviewed by the user; the files hold them now.\n\n{pending}" if pending
               else "\n\nv4 has no pending (unreviewed) changes.")
    return f"{head}\n\n{summary.strip()}{changes}"


def pending_cut(num_chars: int, paths: Sequence[str]) -> str:
    """The note after pending diffs that were cut to `num_chars` characters; `paths`: files not shown."""
    rest = f" Not shown: {', '.join(paths)}." if paths else ""
    return (f"[The diffs were cut at {num_chars:,} characters.{rest} Read the files with read_file (if you "
            "can) before you edit them.]")
