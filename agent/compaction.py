"""Compaction: when a conversation nears the model's context, its older turns become one summary.

Why: the system message (the rules and the whole repository) takes most of the context and never
changes, because it is the cached prefix; the conversation after it grows with every turn, tool
result and reflection until the next prompt no longer fits. Like Claude Code's auto-compact, the
session then asks the model once (no tools, no thinking, a bounded answer) to summarise every turn
but the newest few, and replaces those turns with the summary: a user message that starts with a
marker ("Summary of the earlier conversation (compacted by v4 ...") and an assistant acknowledgement,
so the roles still alternate. The newest `keep_turns` turns stay verbatim.

What must not be lost is not left to the model: v4's pending (unreviewed) edits are added to the
summary message with their diffs (capped, and said so when cut), because the system message shows
the repository as it was when the session started. A summary call that fails or returns nothing
changes nothing and raises `CompactionError`: the history is never cut silently.

Tokens are counted with the backend's tokenizer where it has one, else estimated at 4 characters a
token; `Compactor` remembers each text's count, so a turn's check does not tokenize the repository
or the conversation again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import prompts
from .backends import Backend, BackendError, TextDelta
from .chat_format import Message, split_reasoning
from .workspace_diff import FileDiff

CHARS_PER_TOKEN = 4  # the estimate where the backend has no tokenizer
MESSAGE_OVERHEAD = 4  # role tokens and separators around each message


class CompactionError(RuntimeError):
    """The summary could not be made; the history is unchanged. The message says why, for the user."""


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    """When to compact and how much to keep: compact when the prompt (system message, conversation,
    the next request) plus the answer's room exceeds `threshold` of the context."""

    threshold: float = 0.85
    keep_turns: int = 2  # the newest turns kept verbatim (fewer when they alone would not fit)
    max_summary_tokens: int = 2048
    max_pending_chars: int = 24_000  # v4's pending diffs in the summary message, at most

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"compaction threshold must be in (0, 1], not {self.threshold}")
        if self.keep_turns < 0 or self.max_summary_tokens < 1 or self.max_pending_chars < 0:
            raise ValueError("compaction needs keep_turns >= 0, max_summary_tokens >= 1 and max_pending_chars >= 0")


@dataclass(frozen=True, slots=True)
class Compaction:
    """A compacted conversation: the new history and turn starts, and what it cost before and after
    (tokens of the whole prompt: the system message and the history)."""

    history: list[Message]
    turns: list[int]
    num_turns: int  # turns summarised
    tokens_before: int
    tokens_after: int
    summary: str


class Compactor:
    """Counts a conversation's tokens, decides when it must be compacted, and compacts it."""

    def __init__(self, backend: Backend, policy: CompactionPolicy | None = None) -> None:
        self.backend = backend
        self.policy = policy or CompactionPolicy()
        self._counts: dict[str, int] = {}  # text -> tokens, for the conversation's texts (reset by compaction)
        self._system = ("", 0)  # the system message's text and tokens: one slot, as a rebuild replaces it

    def count(self, text: str, remember: bool = True) -> int:
        """Tokens of `text`: the backend's tokenizer, else the 4-characters estimate."""
        if not text:
            return 0
        known = self._counts.get(text)
        if known is None:
            counted = self.backend.count_tokens(text)
            known = counted if counted is not None else -(-len(text) // CHARS_PER_TOKEN)
            if remember:
                self._counts[text] = known
        return known

    def tokens(self, system: Message, history: Sequence[Message]) -> int:
        """Tokens of the prompt `system` + `history` (content, reasoning and tool calls, and the roles' marks)."""
        if self._system[0] != system.content:
            self._system = (system.content, self.count(system.content, remember=False))
        total = MESSAGE_OVERHEAD + self._system[1]
        for message in history:
            total += MESSAGE_OVERHEAD + self.count(message.content) + self.count(message.reasoning or "")
            total += sum(self.count(f"{c.name} {c.arguments}") for c in message.tool_calls)
        return total

    def needed(self, system: Message, history: Sequence[Message], request: str, answer_tokens: int) -> bool:
        """Whether the next prompt (`history` and the `request` after `system`) with `answer_tokens` of
        room to answer would pass the threshold share of the backend's context."""
        if not history:
            return False
        need = self.tokens(system, history) + MESSAGE_OVERHEAD + self.count(request, remember=False) + answer_tokens
        return need > self.policy.threshold * self.backend.context_length

    def compact(self, system: Message, history: Sequence[Message], turns: Sequence[int],
                pending: Sequence[FileDiff], room: int = 0) -> Compaction | None:
        """Summarise every turn but the newest `keep_turns` (fewer when those alone leave less than
        `room` tokens under the threshold) with one backend call; None when no turn is old enough.
        CompactionError when the call fails or returns nothing (nothing changed)."""
        changes = self.pending_text(pending)
        keep = self._kept_turns(system, history, turns, room + self.count(changes, remember=False))
        start = turns[len(turns) - keep] if keep else len(history)
        num_turns = sum(1 for t in turns if t < start)
        if num_turns == 0:
            return None
        summary = self._summarise(system, history[:start])
        head = [Message("user", prompts.compacted_summary(num_turns, summary, changes)),
                Message("assistant", prompts.COMPACT_ACK)]
        new_history = [*head, *history[start:]]
        new_turns = [t - start + len(head) for t in turns if t >= start]
        before = self.tokens(system, history)
        self._counts = {}  # the summarised texts are gone
        after = self.tokens(system, new_history)
        return Compaction(new_history, new_turns, num_turns, before, after, summary)

    def pending_text(self, pending: Sequence[FileDiff]) -> str:
        """v4's pending changes as diffs, whole files while they fit `max_pending_chars`, then the next
        one cut at a line; a note says where the diffs were cut and which files are not shown."""
        limit = self.policy.max_pending_chars
        parts: list[str] = []
        used = 0
        for index, diff in enumerate(pending):
            block = f"```diff\n{diff.text}```"
            if used + len(block) <= limit:
                parts.append(block)
                used += len(block) + 2
                continue
            head = diff.text[:max(limit - used - 12, 0)]
            head = head[:head.rfind("\n")] if "\n" in head else ""  # whole lines only
            if head:
                parts.append(f"```diff\n{head}\n```")
            unseen = [f"the rest of {diff.path}"] if head else [diff.path]
            parts.append(prompts.pending_cut(limit, unseen + [d.path for d in pending[index + 1:]]))
            break
        return "\n\n".join(parts)

    def _kept_turns(self, system: Message, history: Sequence[Message], turns: Sequence[int], room: int) -> int:
        """`keep_turns`, or fewer (at least one) when the kept turns, the summary and `room` (the next
        request, the answer, the pending diffs) would not fit under the threshold."""
        limit = self.policy.threshold * self.backend.context_length
        keep = min(self.policy.keep_turns, len(turns))
        fixed = self.policy.max_summary_tokens + room
        while keep > 1 and fixed + self.tokens(system, history[turns[len(turns) - keep]:]) > limit:
            keep -= 1
        return keep

    def _summarise(self, system: Message, older: Sequence[Message]) -> str:
        """The model's summary of `older` (the system message first, unchanged: it stays the cached
        prefix), asked without tools or thinking; CompactionError when it fails or is empty."""
        request = Message("user", prompts.COMPACT_PROMPT.format(words=self.policy.max_summary_tokens * 3 // 5))
        messages = [system, *_closed(older), request]
        try:
            text = "".join(e.text for e in self.backend.events(messages, self.policy.max_summary_tokens, 0.0,
                                                               thinking=None, tools=())
                           if isinstance(e, TextDelta))
        except BackendError as exc:
            raise CompactionError(f"the conversation was not compacted: the summary call failed ({exc}); "
                                  "it is unchanged") from exc
        summary = split_reasoning(text)[1].strip()  # a backend that leaves `<think>` in the text
        if not summary:
            raise CompactionError("the conversation was not compacted: the model's summary was empty; "
                                  "it is unchanged")
        return summary


def _closed(messages: Sequence[Message]) -> list[Message]:
    """`messages` ending where a user request may follow: a turn cut short (its request unanswered, or
    tool calls whose results never came) gets a placeholder, so the summary request stays valid."""
    closed = list(messages)
    last = closed[-1] if closed else None
    if last is not None and last.role == "user":
        closed.append(Message("assistant", prompts.TURN_CUT_SHORT))
    elif last is not None and last.role == "assistant" and last.tool_calls:
        closed.extend(Message("tool", prompts.TURN_CUT_SHORT, tool_call_id=c.id) for c in last.tool_calls)
    return closed
