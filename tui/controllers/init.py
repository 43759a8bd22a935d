"""/init: the model drafts the repository's AGENTS.md (or improves the AGENTS.md or CLAUDE.md it has)
from the repository map, in one chat turn that may edit only that file; the draft is a pending change."""

from __future__ import annotations

from v4.agent.init_draft import init_request, repository_map
from v4.agent.turn import TurnResult

from .chat import ChatController
from .context import ContextController


def init_note(path: str, existing: str | None) -> str:
    """What the chat says as /init starts."""
    what = f"Drafting {path}" if existing is None else f"Improving {path}"
    return (f"{what} from the repository map. This turn may edit only {path}; the draft arrives as a pending "
            "change to review with ctrl+r (/review), never committed on its own, and v4 reads it from its next "
            "start.")


def draft_instructions(*, chat: ChatController, context: ContextController, path: str,
                       existing: str | None) -> TurnResult:
    """Build the map and run /init's request through `chat` with the turn allowed to edit only `path`
    (the session's own `editable` is back before the turn is reported). Blocking: a thread worker."""
    with context.lock:  # watch mode re-plans the same index
        map_text = repository_map(context.context)
    return chat.ask(init_request(map_text, existing, path), editable=(path,))
