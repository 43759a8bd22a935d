"""Saved conversations: every session's messages and metadata, kept under the repository's `.v4/sessions/`
so that `v4 --continue`, `v4 --resume ID`, `/sessions` and `v4 refactor --continue` pick one up again.

One JSON file per session, rewritten whole (a temporary file, then a rename) after every turn, so a
crash leaves the previous turn's file, never half of one. The records never hold secrets: no API key,
no endpoint credentials (a URL's user and query are dropped), and a message line that looks like a
credential (repo_index's secret rules, as for the context plan) is replaced by a note before it is
written. `.v4/` gets a `.gitignore` of `*` when v4 creates it, so sessions are never committed; a
session file that git tracks anyway (a `.v4/` that came with a clone) is someone else's and is never
loaded, because a planted conversation would speak for the user.
"""

from __future__ import annotations

import json
import os
import re
import secrets as random_tokens
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from v4.repo_index.secrets import scan_text

from .chat_format import Message
from .dsml import ToolCall

FORMAT = "v4-session"
FORMAT_VERSION = 1
SESSIONS_DIR = Path(".v4") / "sessions"
ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
MAX_REDACTIONS = 200  # per message: a pasted credentials file is refused line by line, not scanned forever
TITLE_CHARS = 80


class SessionStoreError(RuntimeError):
    """A session that cannot be found, read or written; the message says which and why."""


@dataclass(slots=True)
class SessionRecord:
    """One saved conversation: the messages after the system message, where each turn started, and
    what it ran on (the backend's kind and model, thinking) so a resume can say what changed."""

    id: str
    created: str
    updated: str
    title: str = ""
    backend: dict[str, str] = field(default_factory=dict)  # {"kind", "model"}, and an endpoint's bare URL
    thinking: bool = False
    effort: str | None = None
    messages: list[Message] = field(default_factory=list)
    turns: list[int] = field(default_factory=list)  # index in `messages` where each turn's request is
    compactions: int = 0  # times the oldest turns were summarised (agent/compaction.py)
    redacted: int = 0  # lines kept out of the file because they looked like credentials

    @property
    def turn_count(self) -> int:
        return len(self.turns)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "id": self.id, "created": self.created,
                "updated": self.updated, "title": self.title, "backend": self.backend, "thinking": self.thinking,
                "effort": self.effort, "turns": self.turns, "compactions": self.compactions,
                "redacted": self.redacted, "messages": [message_json(m) for m in self.messages]}

    @classmethod
    def from_json(cls, data: Any, source: str) -> SessionRecord:
        """The record in `data`; SessionStoreError naming `source` for anything malformed."""
        try:
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("not a v4 session file")
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"format version {data.get('version')!r}; this v4 reads {FORMAT_VERSION}")
            messages = [message_from_json(m) for m in data["messages"]]
            turns = [int(t) for t in data.get("turns", [])]
            if any(not 0 <= t < len(messages) for t in turns) or turns != sorted(set(turns)):
                raise ValueError("its turn list does not fit its messages")
            return cls(id=str(data["id"]), created=str(data["created"]), updated=str(data["updated"]),
                       title=str(data.get("title", "")), backend=dict(data.get("backend", {})),
                       thinking=bool(data.get("thinking", False)), effort=data.get("effort"), messages=messages,
                       turns=turns, compactions=int(data.get("compactions", 0)),
                       redacted=int(data.get("redacted", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise SessionStoreError(f"session file {source} is damaged ({exc}); it was not loaded") from exc


def message_json(message: Message) -> dict[str, Any]:
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.reasoning is not None:
        data["reasoning"] = message.reasoning
    if message.tool_calls:
        data["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls]
    if message.tool_call_id is not None:
        data["tool_call_id"] = message.tool_call_id
    return data


def message_from_json(data: Any) -> Message:
    if not isinstance(data, dict) or data.get("role") not in ("user", "assistant", "tool"):
        raise ValueError(f"a message with role {data.get('role') if isinstance(data, dict) else data!r}")
    calls = tuple(ToolCall(str(c["id"]), str(c["name"]), dict(c["arguments"])) for c in data.get("tool_calls", []))
    return Message(data["role"], str(data["content"]), reasoning=data.get("reasoning"), tool_calls=calls,
                   tool_call_id=data.get("tool_call_id"))


def redact(text: str, known: Iterable[str] = ()) -> tuple[str, int]:
    """`text` without the values in `known` (an API key) and without lines that look like credentials;
    each such line becomes a note naming the rule. Returns (text, lines replaced)."""
    count = 0
    for value in known:
        if value and len(value) >= 8 and value in text:
            text, found = text.replace(value, "[redacted by v4]"), text.count(value)
            count += found
    for _ in range(MAX_REDACTIONS):
        match = scan_text("conversation.txt", text)
        if match is None or match.line is None:
            break
        lines = text.split("\n")
        lines[match.line - 1] = f"[a line that looked like a credential ({match.rule}) was not saved by v4]"
        text, count = "\n".join(lines), count + 1
    return text, count


def bare_endpoint(url: str) -> str:
    """An endpoint URL as a session may keep it: no user, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def new_id(now: datetime | None = None) -> str:
    """A session id that sorts by time: `20261206-104512-a1b2c3`."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%d-%H%M%S')}-{random_tokens.token_hex(3)}"


def now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class SessionStore:
    """The sessions of the work tree at `root` (`<root>/.v4/sessions/*.json`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.directory = self.root / SESSIONS_DIR

    def create(self, *, backend: dict[str, str] | None = None, thinking: bool = False,
               effort: str | None = None) -> SessionRecord:
        """A new, empty record (written by the first `save`)."""
        stamp = now_text()
        return SessionRecord(new_id(), stamp, stamp, backend=dict(backend or {}), thinking=thinking, effort=effort)

    def save(self, record: SessionRecord, messages: Sequence[Message], turns: Sequence[int],
             secrets: Iterable[str] = ()) -> SessionRecord:
        """Write `messages` (redacted: `redact`) as `record`'s conversation; returns the record as
        written. SessionStoreError when the directory cannot be made or written (nothing is left half)."""
        known = [s for s in secrets if s]
        kept, redacted = [], 0
        for message in messages:
            content, found = redact(message.content, known)
            reasoning, found_too = redact(message.reasoning, known) if message.reasoning else (message.reasoning, 0)
            redacted += found + found_too
            kept.append(Message(message.role, content, reasoning=reasoning, tool_calls=message.tool_calls,
                                tool_call_id=message.tool_call_id))
        record.messages, record.turns = kept, list(turns)
        record.redacted = redacted
        record.updated = now_text()
        if not record.title and turns:
            record.title = _title(kept[turns[0]].content)
        self._prepare()
        path = self._path(record.id)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                json.dump(record.to_json(), out, ensure_ascii=False, indent=1)
            os.replace(temporary, path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise SessionStoreError(f"could not save the session to {path}: {exc}") from exc
        return record

    def load(self, wanted: str) -> SessionRecord:
        """The session whose id is `wanted` or starts with it (unique); SessionStoreError otherwise."""
        wanted = wanted.strip()
        ids = [p.stem for p in self._files()]
        matches = [i for i in ids if i == wanted] or [i for i in ids if i.startswith(wanted)]
        if not wanted or not matches:
            listed = ", ".join(sorted(ids, reverse=True)[:5])
            raise SessionStoreError(f"no saved session {wanted!r} in {self.directory}"
                                    + (f" (recent: {listed}; `v4 sessions` lists them all)" if ids
                                       else " (there are none yet)"))
        if len(matches) > 1:
            raise SessionStoreError(f"{wanted!r} names {len(matches)} sessions ({', '.join(sorted(matches))}): "
                                    "give more of the id")
        return self._read(self._path(matches[0]))

    def latest(self) -> SessionRecord:
        """The session updated last (for --continue); SessionStoreError when there is none."""
        records = self.list()
        if not records:
            raise SessionStoreError(f"no saved session to continue in {self.directory}: start one with `v4`")
        return records[0]

    def list(self, warn: list[str] | None = None) -> list[SessionRecord]:
        """Every readable session, the last updated first; a damaged file is skipped, and said in `warn`."""
        records = []
        for path in self._files():
            try:
                records.append(self._read(path))
            except SessionStoreError as exc:
                if warn is not None:
                    warn.append(str(exc))
        return sorted(records, key=lambda r: (r.updated, r.id), reverse=True)

    def _read(self, path: Path) -> SessionRecord:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SessionStoreError(f"session file {path} cannot be read ({exc}); it was not loaded") from exc
        record = SessionRecord.from_json(data, str(path))
        if record.id != path.stem:
            raise SessionStoreError(f"session file {path} names another id ({record.id}); it was not loaded")
        return record

    def _files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        files = [p for p in self.directory.glob("*.json") if ID_PATTERN.match(p.stem) and p.is_file()]
        tracked = self._tracked()
        return [p for p in files if p.relative_to(self.root).as_posix() not in tracked]

    def _tracked(self) -> set[str]:
        """Session files git tracks: they came with the repository, not from this user's v4."""
        try:
            done = subprocess.run(["git", "ls-files", "-z", "--", SESSIONS_DIR.as_posix()], cwd=self.root,
                                  capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return set()
        return {p for p in done.stdout.decode("utf-8", "replace").split("\0") if p} if done.returncode == 0 else set()

    def _path(self, session_id: str) -> Path:
        if not ID_PATTERN.match(session_id):
            raise SessionStoreError(f"{session_id!r} is not a session id")
        return self.directory / f"{session_id}.json"

    def _prepare(self) -> None:
        """`.v4/sessions/` inside the work tree (a link out of it is refused), with `.v4/.gitignore`."""
        v4_dir = self.root / ".v4"
        try:
            fresh = not v4_dir.exists()
            self.directory.mkdir(parents=True, exist_ok=True)
            if fresh:
                (v4_dir / ".gitignore").write_text("# v4's own files (sessions): never committed\n*\n",
                                                   encoding="utf-8")
        except OSError as exc:
            raise SessionStoreError(f"could not create {self.directory}: {exc}") from exc
        if not self.directory.resolve().is_relative_to(self.root.resolve()):
            raise SessionStoreError(f"{self.directory} leads out of the repository; sessions are not saved there")


def _title(request: str) -> str:
    """A session's title: the first line of its first request (after any instructions put before it)."""
    text = request.split("# Request\n\n", 1)[-1].strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= TITLE_CHARS else line[:TITLE_CHARS - 1] + "…"


class SessionRecorder:
    """Saves one session's conversation after every turn (`Session.recorder`). `secrets` are values
    never written (the endpoint's API key)."""

    def __init__(self, store: SessionStore, record: SessionRecord, secrets: Iterable[str] = ()) -> None:
        self.store = store
        self.record = record
        self._secrets = tuple(s for s in secrets if s)

    def save(self, messages: Sequence[Message], turns: Sequence[int]) -> SessionRecord:
        return self.store.save(self.record, messages, turns, self._secrets)

    def start_new(self) -> None:
        """The conversation starts over (/clear): the next save writes a new session; the old one stays."""
        old = self.record
        self.record = self.store.create(backend=old.backend, thinking=old.thinking, effort=old.effort)
