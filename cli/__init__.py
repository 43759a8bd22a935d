"""The `v4` command line: argument parsing, the one command table, progress bars, exit codes and the
words the user reads. It turns arguments into the typed options of `v4.agent.options` and hands those
down; nothing below this package imports argparse or sees a Namespace (vLLM keeps its entrypoints apart from
the engine the same way).

Modules, in the order a command runs:
- `main.py`: the `v4` console script; builds the parser from the command table and dispatches.
- `commands.py`: the command table (name -> parser builder -> handler), each command once.
- `exit_codes.py`: the exit codes every command uses.
- `backend_args.py`: the model options every model-using command shares -> `BackendOptions`; the
  agent's (`AgentOptions`) and which saved conversation to continue (`ConversationOptions`).
- `progress.py`: progress bars on stderr (checkpoint shards, indexing).
- One module per group of commands: `tui_command.py` (`v4` alone), `index_command.py`,
  `model_command.py` (`model`, `generate`), `refactor_command.py`, `review_command.py` (`review`,
  `commit`, `undo`), `store_command.py` (`prefill`, `store`), `watch_command.py`, `serve_command.py`,
  `sessions_command.py` (`sessions`: the saved conversations).
- `openai_server.py`: the OpenAI-compatible HTTP app `v4 serve` runs (FastAPI + uvicorn, as vLLM's
  entrypoint), on the engine's continuous-batching scheduler, with its access log.
- `openai_requests.py`: what that app accepts, field by field, and its refusals in OpenAI's error shape.
"""
