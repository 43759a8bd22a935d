"""A DeepSeek V4 completion -> its reasoning, its answer and its DSML tool calls, from the whole text or
piece by piece as it streams.

`CompletionSplitter` is the one implementation; `parse_completion` feeds it the whole text at once, so a
stream and its finished text always split the same way. The rules, applied left to right:

  - Thinking mode (the prompt ended in `<think>`) starts in reasoning, chat mode in the answer.
  - `</think>` ends reasoning; `<think>` in the answer starts reasoning again (a repeated `<think>` in
    reasoning and a stray `</think>` in the answer are dropped). Whitespace before a first `<think>` is
    dropped too, so a reply that opens with "\\n<think>" shows no empty answer.
  - `<｜DSML｜tool_calls>` starts the tool calls, in either mode (DeepSeek's parser also stops reasoning
    there); the "\\n\\n" the encoding writes before it is not part of the answer. From there everything is
    held back and parsed as DSML once the completion ends.
  - `<｜end▁of▁sentence｜>` ends the completion; text after it is ignored.

A marker may arrive split across pieces, so the splitter holds back any tail that could still become
one, and `finish()` lets it go as text when no marker came.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .chat_format import EOS, THINK_END, THINK_START, Message
from .dsml import TOOL_CALLS_START, DsmlError, ToolCall, parse_tool_calls, tool_call_feedback

Kind = Literal["reasoning", "answer"]
Chunk = tuple[Kind, str]
_TOOLS_AFTER_BREAK = "\n\n" + TOOL_CALLS_START
_MARKERS = (THINK_START, THINK_END, _TOOLS_AFTER_BREAK, TOOL_CALLS_START, EOS)


@dataclass(frozen=True)
class Completion:
    """One parsed completion.

    `reasoning`: the thinking text, or None when there was none. `answer`: the text for the user,
    without the tool call block. `tool_calls`: the calls, in order. `tool_text`: the raw block from
    `<｜DSML｜tool_calls>` on ("" without one). `tool_error`: why the block could not be read (then
    `tool_calls` is empty: a half-read block runs nothing), else None.
    """

    reasoning: str | None
    answer: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_text: str = ""
    tool_error: str | None = None

    def message(self) -> Message:
        """The assistant message for the history. A block that could not be read stays in its content,
        so the model sees what it wrote next to the feedback about it."""
        content = self.answer + ("\n\n" + self.tool_text if self.tool_error else "")
        return Message("assistant", content, reasoning=self.reasoning, tool_calls=self.tool_calls)

    def feedback(self) -> str | None:
        """The text to send the model when its tool call block was malformed, else None."""
        return None if self.tool_error is None else tool_call_feedback(self.tool_error)


class CompletionSplitter:
    """Feed a completion's pieces as they arrive; get ("reasoning", text) and ("answer", text) chunks
    back. Tool call text is never returned as a chunk: `in_tool_calls` turns True when the block starts,
    and `result()` (after `finish()`) holds the parsed calls."""

    def __init__(self, thinking: bool = False, id_prefix: str = "call_") -> None:
        self.mode: Kind = "reasoning" if thinking else "answer"
        self.id_prefix = id_prefix
        self.in_tool_calls = False
        self.ended = False  # an end-of-sentence was seen
        self.finished = False
        self._pending = ""  # text not yet judged: it may hold the start of a marker
        self._opening = not thinking  # no answer text yet: leading whitespace waits to see a <think>
        self._reasoning: list[str] = []
        self._answer: list[str] = []
        self._tool_text = ""

    def feed(self, piece: str) -> list[Chunk]:
        """The chunks `piece` completes (possibly none)."""
        if self.finished:
            raise RuntimeError("feed() after finish()")
        if self.ended or not piece:
            return []
        if self.in_tool_calls:
            self._take_tool_text(piece)
            return []
        self._pending += piece
        return self._drain(final=False)

    def finish(self) -> list[Chunk]:
        """The chunks still held back (a tail that turned out not to be a marker)."""
        if self.finished:
            return []
        chunks = [] if self.ended or self.in_tool_calls else self._drain(final=True)
        self.finished = True
        return chunks

    def result(self) -> Completion:
        """The whole completion, split; call after `finish()`."""
        if not self.finished:
            raise RuntimeError("result() before finish()")
        reasoning = "".join(self._reasoning) or None
        answer = "".join(self._answer)
        if not self.in_tool_calls:
            return Completion(reasoning, answer)
        block = self._tool_text
        try:
            calls = parse_tool_calls(block, self.id_prefix)
        except DsmlError as exc:
            return Completion(reasoning, answer, (), block, str(exc))
        return Completion(reasoning, answer, tuple(calls), block)

    def _drain(self, final: bool) -> list[Chunk]:
        """Turn pending text into chunks up to the first marker, act on it, and repeat; keep back a tail
        that may be the start of a marker unless `final`."""
        chunks: list[Chunk] = []
        while self._pending and not self.in_tool_calls and not self.ended:
            at, marker = _first_marker(self._pending)
            if marker is None:
                keep = 0 if final else _partial_marker_length(self._pending)
                head = self._pending[:len(self._pending) - keep]
                if not final and self._opening and self.mode == "answer" and not head.strip():
                    break  # only whitespace so far: it is dropped if a <think> follows
                self._pending = self._pending[len(head):]
                self._emit(head, chunks)
                break
            head, self._pending = self._pending[:at], self._pending[at + len(marker):]
            if not (self._opening and self.mode == "answer" and marker == THINK_START and not head.strip()):
                self._emit(head, chunks)
            self._opening = False
            self._act(marker)
        return chunks

    def _act(self, marker: str) -> None:
        """Change mode for `marker`."""
        if marker == EOS:
            self.ended = True
        elif marker in (TOOL_CALLS_START, _TOOLS_AFTER_BREAK):
            self.in_tool_calls = True
            rest, self._pending = self._pending, ""
            self._take_tool_text(TOOL_CALLS_START + rest)
        elif marker == THINK_START:
            self.mode = "reasoning"
        elif self.mode == "reasoning":  # </think>; a stray one in the answer is dropped
            self.mode = "answer"

    def _emit(self, text: str, chunks: list[Chunk]) -> None:
        """Add `text` to the current mode's text and chunks."""
        if not text:
            return
        self._opening = False
        (self._reasoning if self.mode == "reasoning" else self._answer).append(text)
        if chunks and chunks[-1][0] == self.mode:
            chunks[-1] = (self.mode, chunks[-1][1] + text)
        else:
            chunks.append((self.mode, text))

    def _take_tool_text(self, text: str) -> None:
        """Hold tool call text; an end-of-sentence inside it ends the completion."""
        start = max(0, len(self._tool_text) - len(EOS))
        self._tool_text += text
        end = self._tool_text.find(EOS, start)
        if end >= 0:
            self._tool_text, self.ended = self._tool_text[:end], True


def _first_marker(text: str) -> tuple[int, str | None]:
    """The earliest marker in `text` and where it starts (no marker is a prefix of another, so two
    never start at the same place)."""
    found = [(at, marker) for marker in _MARKERS if (at := text.find(marker)) >= 0]
    return min(found) if found else (len(text), None)


def _partial_marker_length(text: str) -> int:
    """The length of the longest tail of `text` that is the start of some marker."""
    longest = 0
    for marker in _MARKERS:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if marker.startswith(text[-size:]):
                longest = size
                break
    return longest


def parse_completion(text: str, thinking: bool = False, id_prefix: str = "call_") -> Completion:
    """The whole completion `text`, split as a stream of it would be (`thinking`: the prompt ended in
    `<think>`). Never raises for a malformed tool call block: see `Completion.tool_error`."""
    splitter = CompletionSplitter(thinking, id_prefix)
    splitter.feed(text)
    splitter.finish()
    return splitter.result()
