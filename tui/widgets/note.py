"""Note: one line or paragraph in the chat that is not the model's answer (a tool call's line too)."""

from __future__ import annotations

from textual.widgets import Static

KINDS = ("prompt", "info", "success", "error", "reflection", "tool", "tool-refused")


class Note(Static):
    """The user's prompt, or v4 telling the user something; `kind` picks the look (a CSS class)."""

    DEFAULT_CSS = """
    Note { height: auto; margin: 0 0 1 0; padding: 0 1; }
    Note.-prompt { background: $boost; border-left: thick $primary; color: $text; text-style: bold; }
    Note.-info { color: $text-muted; }
    Note.-success { color: $text-success; }
    Note.-error { color: $text-error; border-left: thick $error; }
    Note.-reflection { color: $text-warning; border-left: thick $warning; }
    Note.-tool { color: $text-muted; }
    Note.-tool-refused { color: $text-warning; }
    """

    def __init__(self, text: str, kind: str = "info") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown note kind {kind!r}; expected one of {KINDS}")
        super().__init__(text, markup=False, classes=f"-{kind}")
        self.text = text
        self.kind = kind
