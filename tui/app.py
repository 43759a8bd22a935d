"""The v4 app: `v4` with no command, in a repository (started by `cli/tui_command.py`). Screens,
app-wide keys and the palette."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from v4.agent.options import AgentOptions, BackendOptions, ConversationOptions
from v4.agent.workspace import Workspace, WorkspaceError

from .controllers.review import ReviewController
from .screens.help import HelpScreen
from .screens.main import MainScreen
from .screens.review import ReviewScreen
from .widgets.hunk_view import HunkView

PALETTE = (  # (title, help, MainScreen action)
    ("Review changes", "accept or reject v4's pending hunks, then commit", "review"),
    ("Undo last v4 commit", "asks first; only if it is HEAD, unpushed and the tree is clean", "undo"),
    ("Add or drop a file", "force a file into the context, or out of it", "files"),
    ("Toggle context panel", "show or hide the files in context", "toggle_context"),
    ("Model", "the backend and model in use", "model"),
    ("Sessions", "continue a saved conversation of this repository", "sessions"),
    ("Clear chat", "clear the chat and forget the conversation", "clear"),
    ("Draft AGENTS.md", "the model writes AGENTS.md from the repository map, as a pending change", "init"),
    ("Watch mode", "on/off: follow file changes, act on AI! and AI? comments", "watch"),
    ("Stop answer", "stop the answer being generated", "stop"),
)


class V4App(App[str | None]):
    """Opens on the main screen; quitting returns a note for the terminal about pending changes."""

    TITLE = "v4"
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
        Binding("f1", "help", "Help", priority=True,
                tooltip="from anywhere; `?` opens it too where it does not type (outside the prompt)"),
        Binding("question_mark", "help", "Help", show=False),
    ]

    def __init__(self, root: Path, options: BackendOptions, workspace: Workspace,
                 agent: AgentOptions | None = None, conversation: ConversationOptions | None = None) -> None:
        super().__init__()
        self.root = root
        self.review = ReviewController(workspace=workspace)
        self.main = MainScreen(root, options, self.review, agent or AgentOptions(), conversation)
        self.spawns_workers = options.embedded and options.engine.parallel != 1

    def on_load(self) -> None:
        """Before Textual captures stderr (issue 28): the first process multiprocessing spawns (a
        --parallel engine's worker) starts its resource tracker, handing it `sys.stderr.fileno()`,
        which is -1 under Textual ("bad value(s) in fds_to_keep"), so the tracker starts here."""
        if self.spawns_workers:
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()

    def on_mount(self) -> None:
        self.push_screen(self.main)  # pushed, not the default screen: pushing loads its CSS_PATH

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        if screen is self.main:
            for title, help_text, action in PALETTE:
                yield SystemCommand(title, help_text, getattr(self.main, f"action_{action}"))
        yield SystemCommand("Help", "keys and commands", self.action_help)
        yield from super().get_system_commands(screen)

    def action_help(self) -> None:
        """Open help, or close it when it is open (f1 is a priority key, so help never sees it)."""
        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss(None)
        else:
            self.push_screen(HelpScreen([*self.BINDINGS, *MainScreen.BINDINGS],
                                        [*ReviewScreen.BINDINGS, *HunkView.BINDINGS]))

    def action_quit(self) -> None:
        """Stop start-up or the answer and leave; v4's pending changes stay in the work tree, and the
        note says so."""
        self.main.startup.cancel()
        self.main.action_stop()
        if self.main.services is not None:  # a prefill step may still run: not waited for
            self.main.services.watch.stop()
            self.main.services.warmer.close(wait=False)
        self.exit(exit_note(self.review))


def exit_note(review: ReviewController) -> str | None:
    """What to tell the terminal on the way out: pending changes are kept, and how to review them."""
    try:
        pending = review.pending()
    except WorkspaceError as exc:
        return f"v4: could not read the pending changes ({exc}); the work tree is as v4 left it."
    if not pending:
        return None
    paths = ", ".join(d.path for d in pending[:5]) + (f" and {len(pending) - 5} more" if len(pending) > 5 else "")
    return (f"v4: {len(pending)} file(s) with pending v4 changes stay in the work tree ({paths}); "
            "review them with `v4 review` (or `v4` again), commit with `v4 commit`.")
