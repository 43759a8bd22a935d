"""ChoiceScreen: a question with a few answers, for what must not happen without asking (undoing a
commit, leaving review with rejections not yet applied)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


@dataclass(frozen=True, slots=True)
class Choice:
    """One answer: `value` is what the screen returns; `key` picks it, as does its button."""

    value: str
    label: str
    key: str
    variant: str = "default"  # a Button variant: "primary", "error", ...


class ChoiceScreen(ModalScreen[str | None]):
    """Asks `question`, with `details` below it; returns the chosen value, or None for escape.
    `focus` names the choice whose button has focus, so enter takes it."""

    CSS_PATH = "choice.tcss"
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, question: str, details: str, choices: Sequence[Choice], focus: str) -> None:
        super().__init__()
        self.question = question
        self.details = details
        self.choices = {choice.value: choice for choice in choices}
        self.initial = focus

    def compose(self) -> ComposeResult:
        with Vertical(id="choice-body"):
            yield Label(self.question, id="choice-question", markup=False)
            yield Static(self.details, id="choice-details", markup=False)
            with Horizontal(id="choice-buttons"):
                for choice in self.choices.values():
                    yield Button(f"{choice.label} ({choice.key})", id=f"choice-{choice.value}",
                                 variant=choice.variant, compact=True)

    def on_mount(self) -> None:
        self.query_one(f"#choice-{self.initial}", Button).focus()

    def on_key(self, event: events.Key) -> None:
        chosen = next((c.value for c in self.choices.values() if c.key == event.character), None)
        if chosen is not None:
            event.stop()
            self.dismiss(chosen)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(str(event.button.id).removeprefix("choice-"))
