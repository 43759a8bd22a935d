"""ApprovalScreen: may the model's command run? Run once, always for its prefix this session, or deny."""

from __future__ import annotations

from ..controllers.approval import always_label, approval_question
from .choice import Choice, ChoiceScreen


class ApprovalScreen(ChoiceScreen):
    """The approval window over ChoiceScreen: its answers are `agent.approval.Answer` values ("once",
    "always", "deny"; escape returns None, a deny). Deny has focus, so enter never runs anything."""

    CSS_PATH = ["choice.tcss", "approval.tcss"]

    def __init__(self, command: str, prefix: tuple[str, ...]) -> None:
        always = [Choice("always", always_label(prefix), "2", "warning")] if prefix else []
        choices = [Choice("once", "Run once", "1", "primary"), *always, Choice("deny", "Deny", "3", "error")]
        super().__init__(*approval_question(command, prefix), choices, focus="deny")
