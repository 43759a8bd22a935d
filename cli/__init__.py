"""The `v4` command line: argument parsing, the one command table, progress bars, exit codes and the
words the user reads. It turns arguments into the typed options of `v4.agent.options` and hands those
down; nothing below `cli/` imports argparse or sees a Namespace (vLLM keeps its entrypoints apart from
the engine the same way).

Modules, in the order a command runs:
- `main`: the `v4` console script; builds the parser from `commands.COMMANDS` and dispatches.
- `commands`: the command table (name -> parser builder -> handler) and the exit codes.
- `backend_args`: the model options every model-using command shares -> `BackendOptions`.
- `progress`: progress bars on stderr (checkpoint shards).
- `index_command`, `model_command`, `refactor_command`, `store_command`, `watch_command`,
  `serve_command`, `tui_command`: one module per group of commands.
- `openai_server`: the OpenAI-compatible HTTP app `v4 serve` runs (FastAPI), on the engine's scheduler.
"""
