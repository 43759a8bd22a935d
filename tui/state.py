"""The session's reactive state, in one place: the main screen mixes it in and its widgets
`data_bind` to it, so a value set here shows everywhere it is drawn."""

from __future__ import annotations

from textual.reactive import var

from v4.agent.context import ContextView


class SessionState:
    """Reactive vars of one v4 session (mixed into MainScreen, a DOMNode, which makes them live)."""

    ready = var(False)
    """Start-up finished: questions go to the model."""
    busy = var(False)
    """A turn is running in a worker."""
    backend = var("starting…")
    """Backend kind: embedded, http or replay."""
    model = var("")
    """Checkpoint directory name, endpoint model or replay file."""
    random_weights = var(False)
    """The model is the demo checkpoint (or another with random weights): answers are noise."""
    tokens_per_s = var[float | None](None)
    """Generation speed of the last answer."""
    ttft_s = var[float | None](None)
    """Time to the first token of the last answer (prefill included)."""
    kv_bytes = var[int | None](None)
    """Decode-state bytes for the tokens the engine holds (embedded only)."""
    watching = var(False)
    """Watch mode: file changes update the context as they happen; AI comments become questions."""
    pending_files = var(0)
    """Files with v4 changes waiting for review."""
    context = var[ContextView | None](None)
    """The context plan as the panel shows it."""
    context_status = var("indexing the repository…")
    """What the context panel says until there is a plan (start-up's progress)."""
    reused_tokens = var[int | None](None)
    """Tokens of a continued conversation found prefilled (the prefix-state store) when it resumed."""
    offload = var("")
    """Where the weights live and the expert caches' hit rate, when experts are offloaded (embedded only)."""
    attached = var[tuple[str, ...]](())
    """Files this conversation attached in full after the repository, as "path (reason)"."""
    changed = var[tuple[str, ...]](())
    """Files in the context changed since the prefix was cached."""
