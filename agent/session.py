"""The session: prompt assembly, the edit loop (answer -> edits -> validate -> apply, with reflections
on bad edits and on failing tests), and what a turn produced.

The prompt is one system message (the edit rules, then the repository's segments in context order)
followed by the conversation; the system message never changes within a session, so a backend that
caches prefixes prefills the repository once.
"""

from __future__ import annotations

import posixpath
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import prompts
from .attachments import Attachments
from .apply import JournalError, PathError, StaleChangeError, apply_changes, check_path
from .backends import Backend, BackendError, ReasoningDelta, TextDelta, Thinking, ToolCallError
from .chat_format import Message, split_reasoning
from .compaction import CompactionError, CompactionPolicy, Compactor
from .edits import EditBlock, EditError, FileChange, parse_edits, plan_changes
from .instructions import named_paths, nested_instructions, sent_instructions
from .sessions import SessionRecord, SessionRecorder, SessionStoreError
from .dsml import ToolCall
from .tools import READ_FILE, ToolResult, ToolRunner
from .turn import (AnswerFinished, AnswerStarted, Compacted, CompactionFailed, Reply, Retrying, ToolRan, TurnEvent,
                   TurnResult)
from .workspace import DirtyTreeError, Workspace, WorkspaceError

@dataclass(slots=True)
class SessionOptions:
    max_reflections: int = 3
    max_answer_tokens: int = 4096
    temperature: float = 0.0
    dirty_commit: bool = False
    editable: Sequence[str] | None = None  # only these paths may be edited (None: any in the repo)
    test_cmd: str | None = None
    test_retries: int = 2
    test_timeout_s: float = 900.0
    require_edits: bool = False  # headless refactor: an answer without edit blocks is a failure, not an answer
    confirm: Callable[[Sequence[FileChange]], bool] | None = None  # asked before any write; False: declined
    thinking: bool = False  # the model thinks before it answers (front ends turn it on: AgentOptions)
    effort: str | None = None  # "high" or "max"
    max_tool_rounds: int = 20  # answers with tool calls in one turn, before the model must answer
    compaction: CompactionPolicy = CompactionPolicy()  # when the older turns are summarised (compaction.py)


class Session:
    """A conversation about one repository through one backend."""

    def __init__(self, root: Path, backend: Backend, repository: str, options: SessionOptions | None = None,
                 on_text: Callable[[str], None] | None = None,
                 on_event: Callable[[TurnEvent], None] | None = None, *, tools: ToolRunner | None = None,
                 on_reasoning: Callable[[str], None] | None = None, instructions: str = "") -> None:
        self.workspace = Workspace(root)
        self.root = self.workspace.root  # the git top level, whatever directory v4 started in
        self.backend = backend
        self.options = options or SessionOptions()
        self.instructions = instructions  # the root's AGENTS.md (agent/instructions.py); rebuilds keep it
        self.system = prompts.system_message(repository, instructions)
        self.history: list[Message] = []
        self.on_text = on_text or (lambda _piece: None)
        self.on_event = on_event or (lambda _event: None)  # how a turn moves, for progress displays
        self.on_reasoning = on_reasoning or (lambda _piece: None)  # thinking, as it streams
        self.tools = tools  # None: the model is offered no tools
        self.turns: list[int] = []  # where each turn's request starts in `history`
        self.recorder: SessionRecorder | None = None  # saves the conversation after every turn (`.v4/sessions/`)
        self.compactor = Compactor(backend, self.options.compaction)  # summarises old turns near the context
        self.attachments: Attachments | None = None  # files put in the conversation beyond the repository prefix

    def resume(self, record: SessionRecord) -> None:
        """Continue the saved conversation `record`: its messages become this session's history (the
        system message, the repository as it is now, stays this session's own)."""
        self.history = list(record.messages)
        self.turns = list(record.turns)
        if self.attachments is not None:
            self.attachments.forget()
        if self.recorder is not None:
            self.recorder.record = record

    def prompt_style(self) -> tuple[Thinking | None, Sequence[dict[str, Any]]]:
        """How this session's prompts are rendered beyond their messages (thinking, the tools offered):
        a prefill of the system message must render it the same way to be found again."""
        thinking = Thinking(True, self.options.effort) if self.options.thinking else None
        specs = self.tools.specs() if self.tools is not None else []
        return thinking, [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in specs]

    def messages(self, extra: Sequence[Message] = ()) -> list[Message]:
        return [self.system, *self.history, *extra]

    def _ask(self, conversation: list[Message], result: TurnResult) -> Reply:
        """One answer of the model to the conversation so far: thinking, text and tool calls, streamed to
        `on_reasoning` and `on_text` as they come."""
        options = self.options
        thinking, tools = self.prompt_style()
        reply = Reply()
        text: list[str] = []
        reasoning: list[str] = []
        for event in self.backend.events(self.messages(conversation), options.max_answer_tokens,
                                         options.temperature, thinking=thinking, tools=tools):
            if isinstance(event, TextDelta):
                text.append(event.text)
                self.on_text(event.text)
            elif isinstance(event, ReasoningDelta):
                reasoning.append(event.text)
                self.on_reasoning(event.text)
            elif isinstance(event, ToolCallError):
                reply.tool_error = event.message
            else:
                reply.calls.append(event)
        inline, reply.text = split_reasoning("".join(text))  # a backend that leaves `<think>` in the text
        reply.reasoning = "".join(reasoning) + (inline or "")
        last = self.backend.last_usage
        usage = result.usage
        usage.prompt_tokens += last.prompt_tokens
        usage.cached_tokens += last.cached_tokens
        usage.completion_tokens += last.completion_tokens
        usage.seconds += last.seconds
        return reply

    def run(self, instruction: str, *, user_edited: Sequence[str] = (), answer_only: bool = False,
            editable: Sequence[str] | None = None) -> TurnResult:
        """Answer `instruction`, applying its edits atomically; the model's tool calls run (approved, in
        the sandbox) and their results go back until it answers without one; bad edits and failing tests
        go back to the model (bounded). The turn joins the history whatever happened.

        `user_edited`: files whose uncommitted changes are the request itself (AI comments): they may be
        edited although dirty, on top of the user's text, which review restores for a rejected hunk.
        `answer_only`: a question; the answer is never read for edits. `editable`: only these paths
        may be edited in this turn (/init), whatever the session's own `options.editable`."""
        if editable is not None:  # restored before the turn is reported: nothing runs under the limit after it
            before, self.options.editable = self.options.editable, tuple(editable)
            try:
                return self.run(instruction, user_edited=user_edited, answer_only=answer_only)
            finally:
                self.options.editable = before
        result = TurnResult()
        attached_before = len(self.attachments.report) if self.attachments is not None else 0
        self._compact_when_full(instruction, result)
        conversation = [Message("user", self._with_nested_instructions(instruction, user_edited))]
        test_rounds = tool_rounds = number = 0
        while True:
            number += 1
            self.on_event(AnswerStarted(number))
            try:
                reply = self._ask(conversation, result)
            except BackendError as exc:
                result.error = str(exc)
                break
            last = self.backend.last_usage
            self.on_event(AnswerFinished(number, last.completion_tokens, last.seconds))
            result.answer = reply.text
            result.reasoning += ("\n\n" if result.reasoning and reply.reasoning else "") + reply.reasoning
            conversation.append(Message("assistant", reply.text, reasoning=reply.reasoning or None,
                                        tool_calls=tuple(reply.calls)))
            if reply.tool_error and not reply.calls and self.tools is not None \
                    and tool_rounds < self.options.max_tool_rounds:  # a call it wrote but we could not read
                tool_rounds += 1
                conversation.append(Message("user", reply.tool_error))
                continue
            if reply.calls and self.tools is not None and tool_rounds < self.options.max_tool_rounds:
                tool_rounds += 1
                feedback = None if answer_only else self._apply(reply.text, result, user_edited, calls=True)
                if result.refused:
                    break
                conversation.extend(self._run_tools(reply.calls, result, feedback))
                continue
            feedback = None if answer_only else self._apply(reply.text, result, user_edited)
            if feedback is None and result.applied and self.options.test_cmd and not result.refused:
                feedback = self._test_feedback()
                result.tests_failed = feedback is not None
                if feedback is not None:
                    test_rounds += 1
                    if test_rounds > self.options.test_retries:
                        result.error = "the tests still fail after the model's fixes"
                        break
                    self.on_event(Retrying(number + 1, f"`{self.options.test_cmd}` failed"))
                    conversation.append(Message("user", feedback))
                    continue
            if feedback is None or result.refused:
                break
            if result.reflections >= self.options.max_reflections:
                answers = result.reflections + 1
                result.error = (f"no valid edit after {answers} answer{'s' if answers > 1 else ''} from the model: "
                                f"{result.problem or 'its edits did not apply'}")
                result.model_feedback = feedback
                break
            result.reflections += 1
            self.on_event(Retrying(number + 1, result.problem or "its edits did not apply"))
            conversation.append(Message("user", feedback))
        if self.attachments is not None:  # what this turn put in the conversation beyond the prefix
            result.attached = [a.to_json() for a in self.attachments.report[attached_before:]]
        self.turns.append(len(self.history))
        self.history.extend(conversation)
        self._keep(result)
        return result

    def compact(self, request: str = "", *, when_full: bool = False) -> Compacted | None:
        """Replace the older turns by the model's summary (`compaction.py`; the system message is never
        touched), emit and return `Compacted`, and save the conversation. None: no turn is old enough
        (or, `when_full`, the next prompt with `request` still fits). CompactionError: the summary failed
        and the history is unchanged; SessionStoreError: compacted, but not saved."""
        answer = self.options.max_answer_tokens
        if when_full and not self.compactor.needed(self.system, self.history, request, answer):
            return None
        try:
            pending = self.workspace.pending()  # listed in the summary: the system message predates them
        except WorkspaceError as exc:
            raise CompactionError(f"the conversation was not compacted: v4's pending changes could not be read "
                                  f"({exc}); it is unchanged") from exc
        room = answer + self.compactor.count(request, remember=False)
        done = self.compactor.compact(self.system, self.history, self.turns, pending, room)
        if done is None:
            return None
        self.history, self.turns = done.history, done.turns
        if self.attachments is not None:  # the summarised turns' attachments are gone from the conversation
            self.attachments.forget(report=False)
        event = Compacted(done.num_turns, done.tokens_before, done.tokens_after)
        self.on_event(event)
        if self.recorder is not None:
            self.recorder.record.compactions += 1
            self.recorder.save(self.history, self.turns)
        return event

    def _compact_when_full(self, request: str, result: TurnResult) -> None:
        """At a turn's start: compact when the next prompt would near the context; a failure is said in
        `result` and by `CompactionFailed`, and the turn goes on with the history unchanged."""
        try:
            result.compacted = self.compact(request, when_full=True)
        except CompactionError as exc:
            result.compaction_error = str(exc)
            self.on_event(CompactionFailed(str(exc)))
        except SessionStoreError as exc:
            result.session_error = str(exc)

    def _keep(self, result: TurnResult) -> None:
        """After a turn: the backend keeps the conversation's state (the embedded engine snapshots it in
        the prefix-state store, so a resumed session need not prefill it again), and the recorder
        saves the messages. Neither failing fails the turn: it is said in `result.session_error`."""
        keep = getattr(self.backend, "keep_conversation", None)  # only backends with a state to keep
        if keep is not None and not result.error:
            thinking, tools = self.prompt_style()
            try:
                keep(self.messages(), thinking=thinking, tools=tools)
            except BackendError as exc:
                result.session_error = f"the conversation's state was not stored: {exc}"
        if self.recorder is not None:
            try:
                self.recorder.save(self.history, self.turns)
            except SessionStoreError as exc:
                result.session_error = str(exc)

    def _with_nested_instructions(self, instruction: str, user_edited: Sequence[str]) -> str:
        """`instruction`, after the AGENTS.md (or CLAUDE.md) files of the directories below the root that
        hold the files this turn names (--files, AI comments' files, paths in the request) and that
        this conversation has not been shown yet, and after the files attached to it in full
        (`attachments.py`: named ones and uncommitted changes the repository prefix does not show)."""
        given = [*(self.options.editable or ()), *user_edited]
        named = [*given, *named_paths(self.root, instruction)]
        sent = sent_instructions(m.content for m in self.history if m.role == "user")
        nested = nested_instructions(self.root, named, sent)  # `..` and absolute names are skipped
        attached = self.attachments.for_request(instruction, len(self.turns), given) if self.attachments else ""
        head = "\n\n".join(part for part in (nested.text, attached) if part)
        return f"{head}\n\n# Request\n\n{instruction}" if head else instruction

    def _run_tools(self, calls: Sequence[ToolCall], result: TurnResult, feedback: str | None) -> list[Message]:
        """Run each call through the tool runner (approval, sandbox) and return the tool messages for
        the model; an edit problem in the same answer rides along with the first result."""
        assert self.tools is not None
        messages = []
        for call in calls:
            outcome = self.tools.run(call.name, call.arguments)
            result.tool_calls.append(outcome.record())
            if self.attachments is not None and outcome.name == READ_FILE and outcome.allowed:
                self.attachments.note_read(str(outcome.arguments.get("path", "")), outcome.text, len(self.turns))
            reason = None if outcome.allowed else _first_line(outcome.text)
            self.on_event(ToolRan(call.name, call.arguments, outcome.allowed, outcome.exit_code, _summary(outcome),
                                  reason))
            content = outcome.text if feedback is None or messages else f"{feedback}\n\n{outcome.text}"
            messages.append(Message("tool", content, tool_call_id=call.id))
        return messages

    def _apply(self, answer: str, result: TurnResult, user_edited: Sequence[str] = (), calls: bool = False
               ) -> str | None:
        """Apply the answer's edits; returns feedback for the model when they are invalid."""
        try:
            blocks = parse_edits(answer)
            if not blocks:
                if self.options.require_edits and not calls and not result.applied:
                    result.problem = "the answer held no edit blocks"
                    return prompts.NO_EDIT_BLOCKS
                return None  # a chat answer without edits
            self._check_targets(blocks)
            changes = [c for c in plan_changes(blocks, self._read) if c.before != c.after]
        except (EditError, PathError, WorkspaceError) as exc:
            result.problem = str(exc)
            return prompts.edits_not_applied(str(exc))
        if not changes:
            return None
        own = {posixpath.normpath(p) for p in user_edited}
        targets = [c.path for c in changes if posixpath.normpath(c.path) not in own]
        dirty = [] if self.options.dirty_commit else self.workspace.dirty_paths(targets)
        if dirty:  # refused before asking; checked again under the lock below
            result.refused, result.error = True, str(DirtyTreeError(dirty))
            return result.error
        if self.options.confirm is not None and not self.options.confirm(changes):
            result.declined = True
            return None
        try:
            with self.workspace.locked():  # no other v4 process edits or records between these steps
                self.workspace.prepare(targets, self.options.dirty_commit)
                previous = self.workspace.record_changes(changes)
                try:
                    apply_changes(self.root, changes, journal_dir=self.workspace.journal_dir)
                except BaseException:
                    self.workspace.restore_record(previous)
                    raise
        except DirtyTreeError as exc:
            result.refused, result.error = True, str(exc)
            return str(exc)
        except (StaleChangeError, PathError, JournalError, OSError, WorkspaceError) as exc:  # all or none
            result.error = f"the edits could not be written, nothing was changed: {exc}"
            return prompts.edits_not_written(str(exc))
        paths = [c.path for c in changes]
        result.applied = True
        result.files = sorted(set(result.files) | set(paths))
        shown = {self.workspace.rel(p) for p in result.files}
        result.diff = "".join(d.text for d in self.workspace.pending() if d.path in shown)
        return None

    def _check_targets(self, blocks: Sequence[EditBlock]) -> None:
        """Every block's path is safe, allowed, and not a file git ignores (unless the user named it)."""
        named = set(self.options.editable or ())
        for block in blocks:
            check_path(self.root, block.path)
            if self.options.editable is not None and block.path not in named:
                raise EditError(f"{block.path} is not one of the files you may edit: "
                                f"{', '.join(self.options.editable)}")
        ignored = self.workspace.ignored([b.path for b in blocks if b.path not in named])
        if ignored:
            raise EditError(f"{', '.join(ignored)}: ignored by git (.gitignore or similar), and v4 never edits "
                            "or deletes ignored files unless the user names them. Leave "
                            f"{'it' if len(ignored) == 1 else 'them'} unchanged.")

    def _read(self, path: str) -> str | None:
        """Exact contents (no newline translation: apply checks them byte for byte)."""
        file = check_path(self.root, path)
        if not file.exists():
            return None
        try:
            return file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EditError(f"{path} is not UTF-8 text; v4 does not edit it") from exc

    def _test_feedback(self) -> str | None:
        """None when the test command passes; else its output (tail) for the model."""
        try:
            done = subprocess.run(self.options.test_cmd, shell=True, cwd=self.root, capture_output=True, text=True,
                                  timeout=self.options.test_timeout_s)
        except subprocess.TimeoutExpired:
            return prompts.tests_timed_out(self.options.test_cmd, self.options.test_timeout_s)
        if done.returncode == 0:
            return None
        output = (done.stdout + done.stderr)[-6000:]
        return prompts.tests_failed(self.options.test_cmd, done.returncode, output)


def _summary(outcome: ToolResult) -> str:
    """One line for a progress display: what ran and how it ended, or why it was refused."""
    what = " ".join(f"{value}" for value in outcome.arguments.values())[:120]
    if not outcome.allowed:
        return f"{what}: refused ({_first_line(outcome.text)[:160]})"
    return f"{what}: exit {outcome.exit_code}" if outcome.exit_code is not None else what


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text.strip() else "not allowed"
