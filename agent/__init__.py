"""The agent: a conversation about one repository, whose answers become reviewed, journaled edits.

Modules, in the order a turn uses them:
- `options.py`: the typed options a front end (cli/, tui/) hands down.
- `demo.py`: the tiny random checkpoint used when no model is named.
- `backends/`: the `Backend` Protocol and its adapters (embedded engine, OpenAI-compatible HTTP, replay).
- `chat_format.py`: DeepSeek V4's chat encoding (messages, tools and tool results -> prompt text), over
  `dsml.py` (the DSML tool call markup: rendered and parsed); `completion.py` splits a completion,
  whole or streaming, into reasoning, answer and tool calls.
- `context.py`: the repository's context plan, with the user's /add and /drop.
- `prompts.py`: every text v4 sends the model on its own behalf, and the system message.
- `instructions.py`: the project's AGENTS.md (or CLAUDE.md) files: the root's, and a directory's own.
- `init_draft.py`: /init's repository map and its request to draft (or improve) AGENTS.md.
- `bootstrap.py`: options -> backend (`open_backend`), context -> session (`open_session`).
- `attachments.py`: files put in a request in full after the repository prefix (named, uncommitted).
- `sessions.py`: saved conversations under `.v4/sessions/` (--continue, --resume, `v4 sessions`).
- `session.py`: the loop of one turn (answer -> tool calls -> edits -> apply, reflections, tests), with
  `turn.py` (what a turn produced, the events a front end follows it by) and `compaction.py` (the older
  turns summarised when the conversation nears the context).
- `tool_setup.py`: the session's tools from the user's options: `tools.py` (the model's tools and their
  runner), over `approval.py` (the one approval point) and `sandbox.py` (commands under bubblewrap).
- `warm.py`: keeps the system message prefilled in the background as the context changes.
- `edits.py`: the edit protocol's API, over `edit_blocks.py` (types), `edit_parser.py`
  (SEARCH/REPLACE blocks in an answer), `edit_match.py` (the matching ladder), `edit_splice.py`
  (REPLACE's frame and bytes), `edit_syntax.py` (tree-sitter checks) and `edit_feedback.py`
  (messages to the model).
- `workspace.py`: the one owner of repository paths, reads and writes; over `workspace_state.py`
  (v4's records in the git directory), `workspace_diff.py` (hunks, three-way merge), `workspace_git.py`
  (commits), `apply.py` and `journal.py` (all-or-nothing writes that survive a crash).
- `watch/`: watch mode (file events -> re-plan -> re-prefill; AI comments start a turn).
"""

if __name__ != "v4.agent":  # the folder is also reachable from the repository root: one copy only
    raise ImportError(f"import v4.agent, not {__name__} (the packages live in the v4 namespace; see README)")
