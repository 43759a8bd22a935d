"""From options to a working session, the same way for every front end: `v4 refactor`, `v4 prefill`,
`v4 watch` and the TUI all open the backend with `open_backend` and the session with `open_session`
(plan -> system message -> Session), so the prompt one of them prefills is the prompt the others send.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .attachments import Attachments
from .backends import Backend, BackendError, EmbeddedBackend, HttpBackend, ReplayBackend, Thinking, Tool
from .chat_format import Message
from .context import ContextView, RepositoryContext
from .demo import RANDOM_WEIGHTS_ANSWER_TOKENS, has_random_weights
from .instructions import root_instructions
from .options import AgentOptions, BackendOptions, ConversationOptions
from .session import Session, SessionOptions
from .sessions import SessionRecord, SessionRecorder, SessionStore, bare_endpoint
from .tool_setup import Ask, tool_setup
from .turn import TurnEvent

if TYPE_CHECKING:
    from v4.model.prefix_store import PrefillStats, PrefixStore
    from v4.repo_index.plan import Skipped

CPU_DEFAULT_BUDGET = 8_192  # an engine on CPU prefills ~1-3k tokens/s: a session starts in seconds
ANSWER_RESERVE = 4_096  # context tokens kept free for the conversation and the answer
DEFAULT_ANSWER_TOKENS = 4_096  # the longest answer unless the user says otherwise
THINKING_ANSWER_TOKENS = 32_768  # a thinking turn: reasoning and answer (DeepSeek's API allows 32K by default)
MIN_ATTACH_TOKENS = 4_096  # files a request may attach in full, however small the room (attachments.py)
ShardProgress = Callable[[str, int, int], None]  # (shard, bytes done, bytes total) while a checkpoint loads


@dataclass(slots=True)
class ChosenBackend:
    """The backend the options name, with the repository budget planned for it."""

    backend: Backend
    budget: int  # repository tokens in the context
    tokenizer_dir: Path | None  # whose tokenizer counts the repository's tokens (None: v4's own)
    answer_tokens: int = DEFAULT_ANSWER_TOKENS  # the longest answer the context keeps room for


def open_backend(options: BackendOptions, load_progress: ShardProgress | None = None,
                 warn: Callable[[str], None] | None = None,
                 answer_tokens: int = DEFAULT_ANSWER_TOKENS) -> ChosenBackend:
    """The backend `options` name; BackendError with what to pass when they name none or several.
    `load_progress` follows a checkpoint's shards as they load and `warn` gets the prefix-state
    store's warnings (a corrupt entry recomputed): both for the embedded engine only. The repository's
    budget leaves room for an answer of `answer_tokens` (a quarter of a small context at most), and
    `ChosenBackend.answer_tokens` is that room: a session's answers are capped to it."""
    chosen = options.chosen
    if len(chosen) != 1:
        raise BackendError("choose one model: --model DIR (or $V4_MODEL), --endpoint URL or --replay FILE"
                           + (f" (got {', '.join('--' + c for c in chosen)})" if chosen else ""))
    if options.replay:
        replay = ReplayBackend.from_file(options.replay)
        room = answer_room(replay.context_length, answer_tokens)
        return ChosenBackend(replay, options.budget or repository_budget(replay.context_length, room), None, room)
    if options.endpoint:
        backend = HttpBackend(options.endpoint, options.endpoint_model, options.api_key)
        room = answer_room(backend.context_length, answer_tokens)
        return ChosenBackend(backend, options.budget or repository_budget(backend.context_length, room), None, room)
    return _embedded(options, load_progress, warn, answer_tokens)


def answer_room(context_length: int, answer_tokens: int) -> int:
    """The longest answer a context keeps room for: `answer_tokens`, at most a quarter of the context."""
    return max(min(answer_tokens, context_length // 4), 1)


def repository_budget(context_length: int, room: int = ANSWER_RESERVE) -> int:
    """The repository's share of a backend's context: all of it less room for the answer (`room`,
    at least ANSWER_RESERVE for the conversation) and never more than a quarter of a small context."""
    return max(context_length - min(max(room, ANSWER_RESERVE), context_length // 4), 1)


def _embedded(options: BackendOptions, load_progress: ShardProgress | None,
              warn: Callable[[str], None] | None, answer_tokens: int) -> ChosenBackend:
    from v4 import model
    from v4.model.config import ConfigError
    from v4.model.weights import WeightsError

    from .chat_format import chat_format_for

    store = open_store(options, warn) if options.use_store else None  # refused before the model loads
    progress = {"progress": load_progress} if load_progress is not None else {}
    try:
        engine = model.load(options.model, **options.engine.load_options(), **progress)
    except (ConfigError, WeightsError, OSError, ValueError, model.EngineInputError, model.ParallelError) as exc:
        raise BackendError(f"cannot load {options.model}: {exc}") from exc
    limit = engine.context_length  # the model's context, as `v4 model info` reports it
    room = answer_room(limit, answer_tokens)
    most = repository_budget(limit, room)  # the whole context less the answer's room
    default = CPU_DEFAULT_BUDGET if engine.device.type == "cpu" else most
    budget = max(min(options.budget or default, most), 1)
    # the state is sized for the repository, the answer and the conversation, not for the model's limit
    context = min(limit, budget + (limit - most) + 3 * min(ANSWER_RESERVE, limit // 4))
    backend = EmbeddedBackend(engine, chat_format_for(options.model), context, store)
    return ChosenBackend(backend, budget, options.model, room)


def open_store(options: BackendOptions, warn: Callable[[str], None] | None = None) -> PrefixStore:
    """The prefix-state store the options name, checked (BackendError for a file, a foreign or
    read-only directory, an old store) before anything is loaded or computed."""
    from v4.model.prefix_store import PrefixStore, StoreError, default_store_dir

    try:
        store = PrefixStore(options.store_dir or default_store_dir(), warn=warn)
        store.prepare()
    except StoreError as exc:
        raise BackendError(str(exc)) from exc
    return store


def secrets_warning(endpoint: str | None, secrets: list[Skipped]) -> str | None:
    """Issue 22: the warning for files that look like credentials and would go to a remote endpoint
    (only --include-secrets puts them in the context); None when there is nothing to say."""
    if not endpoint or not secrets:
        return None
    listed = "; ".join(f"{s.path} ({s.reason})" for s in secrets[:10])
    more = f"; and {len(secrets) - 10} more" if len(secrets) > 10 else ""
    return (f"warning: --include-secrets: {len(secrets)} file(s) that look like credentials will be sent to "
            f"{endpoint}: {listed}{more}")


@dataclass(frozen=True, slots=True)
class BackendInfo:
    """The backend as the status bar and /model describe it."""

    kind: str  # "embedded" | "http" | "replay"
    model: str
    random_weights: bool
    budget: int  # repository tokens in the context
    context_length: int  # the model's context: the checkpoint's (`v4 model info`) or the server's
    state_bytes_per_token: float | None  # decode-state bytes each token adds (embedded engine only)
    session_length: int | None = None  # tokens this session holds, when fewer on purpose (a CPU's state)
    context_note: str | None = None  # what was assumed (an endpoint that does not give its context)
    offload: dict[str, object] | None = None  # where the weights live, when experts are offloaded (embedded only)

    def context_text(self) -> str:
        """The context in the words every front end uses: "context 65,536 tokens; this session uses 24,576"."""
        return context_words(self.context_length, self.session_length) + (f" ({self.context_note})"
                                                                          if self.context_note else "")

    def context_json(self) -> dict[str, int | str | None]:
        """The same for `--json`: the model's context, this session's share of it, what was assumed."""
        return {"context_length": self.context_length, "session_length": self.session_length or self.context_length,
                "context_note": self.context_note}


def context_words(context_length: int, used: int | None = None, user: str = "this session") -> str:
    """Says "context N tokens", and what `user` holds of it when that is less (chosen on purpose)."""
    words = f"context {context_length:,} tokens"
    return words + (f"; {user} uses {used:,}" if used is not None and used < context_length else "")


def offload_words(report: dict[str, object] | None) -> str:
    """An offload report (`Engine.offload_report`) in the status bar's words: "GPU 19.9G · experts
    21/256 per layer · host 140G pinned · hit 87%"; empty without offload."""
    if not report:
        return ""
    gib = 2**30
    parts = [f"experts {report['experts_per_layer_on_gpu']}/{report['experts_per_layer']} per layer"]
    if report.get("gpu_bytes") is not None:
        parts.insert(0, f"GPU {report['gpu_bytes'] / gib:.3g}G")
    host = [f"{report[key] / gib:.3g}G {place}" for key, place in (("pinned_bytes", "pinned"), ("mmap_bytes", "mmap"))
            if report.get(key)]
    if host:
        parts.append("host " + ", ".join(host))
    rate = report.get("hit_rate")
    parts.append("hit " + ("—" if rate is None else f"{100 * rate:.0f}%"))
    return " · ".join(parts)


def describe_backend(chosen: ChosenBackend, options: BackendOptions) -> BackendInfo:
    """Name the backend `open_backend` chose; the engine's state size per token if embedded."""
    backend = chosen.backend
    per_token, context, offload = None, backend.context_length, None
    if options.replay:
        model = Path(options.replay).name
    elif options.endpoint:
        model = getattr(backend, "model", None) or options.endpoint
    else:
        model = Path(options.model).name
        if isinstance(backend, EmbeddedBackend):
            from v4.model.checkpoint import state_bytes_per_token

            engine = backend.engine
            config, context = engine.model.config, engine.context_length
            if engine.config.kv_format == "fp8":  # DeepSeek's layout, whatever the model's dtype
                per_token = state_bytes_per_token(config, fp8=True)
            else:  # counted in bf16 (2 bytes a value); the engine keeps its state in its own dtype
                per_token = state_bytes_per_token(config, fp8=False) / 2 * engine.dtype.itemsize
            offload = backend.offload_report()
    random_weights = bool(options.model) and has_random_weights(options.model)
    note = backend.context_note if isinstance(backend, HttpBackend) else None
    return BackendInfo(backend.name, model, random_weights, chosen.budget, context, per_token,
                       backend.context_length if backend.context_length < context else None, note, offload)


def answer_tokens(options: BackendOptions, requested: int | None, thinking: bool = False) -> int:
    """The longest answer: what the user asked for, else 4,096 (32,768 when the model thinks first: a
    thinking turn must not be cut off in its reasoning), or 256 for a checkpoint of random weights
    (`v4 model init`, the demo), whose answers are noise and cost minutes each on a CPU."""
    if requested is not None:
        return requested
    random = options.embedded and options.model is not None and has_random_weights(options.model)
    if random:
        return RANDOM_WEIGHTS_ANSWER_TOKENS
    return THINKING_ANSWER_TOKENS if thinking else DEFAULT_ANSWER_TOKENS


def prefill(backend: Backend, system: Message, *, thinking: Thinking | None = None,
            tools: Sequence[Tool] = ()) -> PrefillStats | None:
    """Feed the system message (rules + repository, rendered with the session's thinking and tools) to
    an embedded backend now, so the first question only pays for itself; resumes from the prefix-state
    store when it holds a prefix. None for other backends (they keep their own caches)."""
    if not isinstance(backend, EmbeddedBackend):
        return None
    return backend.prefill([system], thinking=thinking, tools=tools)


def prefill_session(backend: Backend, session: Session) -> PrefillStats | None:
    """`prefill` of `session`'s system message, rendered as its turns will render it; for a resumed
    session the whole conversation, which the session that saved it left in the prefix-state store."""
    thinking, tools = session.prompt_style()
    if session.history and isinstance(backend, EmbeddedBackend):
        return backend.resume(session.messages(), thinking=thinking, tools=tools)
    return prefill(backend, session.system, thinking=thinking, tools=tools)


def saved_session(root: Path, conversation: ConversationOptions) -> SessionRecord | None:
    """The saved conversation `conversation` names (--continue: the last; --resume ID), None for a new
    one; SessionStoreError when there is none to continue, or it cannot be read. Called before the
    model loads, so a wrong id costs nothing."""
    store = SessionStore(root)
    if conversation.resume:
        return store.load(conversation.resume)
    return store.latest() if conversation.continue_last else None


def session_backend(options: BackendOptions, chosen: ChosenBackend) -> dict[str, str]:
    """What a saved session says it ran on: the backend's kind and model (an endpoint without its
    credentials; never the API key)."""
    described = {"kind": chosen.backend.name}
    if options.endpoint:
        described["endpoint"] = bare_endpoint(options.endpoint)
        described["model"] = getattr(chosen.backend, "model", None) or ""
    elif options.model:
        described["model"] = Path(options.model).name
    elif options.replay:
        described["model"] = Path(options.replay).name
    return described


@dataclass(slots=True)
class OpenedSession:
    """A session over the planned context, and what planning found."""

    session: Session
    view: ContextView
    secrets_warning: str | None  # to show before anything is sent (issue 22)
    tools_warning: str | None = None  # the sandbox cannot start, or runs unconfined
    instructions_warning: str | None = None  # an AGENTS.md not read (outside the repository, not UTF-8)
    record: SessionRecord | None = None  # where the conversation is saved (None: --no-save)
    resumed: bool = False  # the conversation continues a saved one


def open_session(context: RepositoryContext, chosen: ChosenBackend, options: SessionOptions, *,
                 endpoint: str | None = None, backend: Backend | None = None,
                 on_text: Callable[[str], None] | None = None,
                 on_event: Callable[[TurnEvent], None] | None = None,
                 agent: AgentOptions | None = None, ask: Ask | None = None,
                 include_secrets: bool = False, record: SessionRecord | None = None, save: bool = True,
                 backend_options: BackendOptions | None = None) -> OpenedSession:
    """Plan `context` (already scanned) for the chosen budget and open a session whose system message
    holds it, with the thinking and tools `agent` asks for (None: no tools, no thinking). `backend`
    replaces the chosen one in the session (the TUI meters it); `endpoint` names where the context
    goes, for the secrets warning; `ask` puts a command to the user (None: headless, only
    --allow-commands). `record`: a saved conversation to continue (`saved_session`); `save`: record
    this one after every turn under `.v4/sessions/` (`backend_options` describe the backend there and
    name the API key it must never hold). WorkspaceError outside a git work tree."""
    view = context.plan(chosen.budget)
    agent = agent or AgentOptions(thinking=False, tools=False)
    options = dataclasses.replace(options, thinking=agent.thinking, effort=agent.effort)
    found = root_instructions(context.root)  # the root's AGENTS.md (or CLAUDE.md): in the system message
    session = Session(context.root, backend or chosen.backend, context.repository_text(), options, on_text=on_text,
                      on_event=on_event, instructions=found.text)
    setup = tool_setup(session.workspace, agent, ask, include_secrets)
    session.tools = setup.runner
    room = chosen.backend.context_length - view.total_tokens - session.options.max_answer_tokens  # the conversation's
    session.attachments = Attachments(session.workspace, held=context.holds, known=context.paths,
                                      count_tokens=(backend or chosen.backend).count_tokens,
                                      max_tokens=max(room // 2, MIN_ATTACH_TOKENS), include_secrets=include_secrets)
    if save:
        store = SessionStore(session.root)
        described = session_backend(backend_options, chosen) if backend_options is not None else {}
        kept = record or store.create(backend=described, thinking=agent.thinking, effort=agent.effort)
        kept.backend, kept.thinking, kept.effort = described or kept.backend, agent.thinking, agent.effort
        key = backend_options.api_key if backend_options is not None else None
        session.recorder = SessionRecorder(store, kept, secrets=[key] if key else [])
    if record is not None:
        session.resume(record)
    return OpenedSession(session, view, secrets_warning(endpoint, context.secrets_sent), setup.warning, found.warning,
                         session.recorder.record if session.recorder is not None else record, record is not None)
