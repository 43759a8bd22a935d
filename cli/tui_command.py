"""`v4` with no command: the TUI on the repository holding the current directory.

Exit codes: 0 closed normally, 1 start-up failed (the app said why), 2 not in a git work tree.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .backend_args import agent_options, backend_options, conversation_options
from .exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    from v4.agent.workspace import Workspace, WorkspaceError
    from v4.tui.app import V4App  # Textual loads only for the TUI

    try:
        options = backend_options(args)
        agent = agent_options(args)
        conversation = conversation_options(args)
        workspace = Workspace(Path.cwd())
    except ValueError as exc:
        print(f"v4: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WorkspaceError as exc:
        print(f"v4: {exc}. v4 edits through git so that every change can be reviewed and undone: "
              "run `git init` first (`v4 index` shows how v4 reads any directory).", file=sys.stderr)
        return EXIT_USAGE
    app = V4App(workspace.root, options, workspace, agent=agent, conversation=conversation)
    app.run()
    if app.return_value:
        print(app.return_value)
    return EXIT_FAILED if app.main.startup_error else EXIT_OK
