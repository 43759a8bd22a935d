"""The tools a session offers, assembled from the user's options: the sandbox the commands run in, the
approval policy that decides which may run, and the runner that executes the model's calls.

Headless commands (`v4 refactor`, `v4 watch`) run only what `--allow-commands GLOB` names; a front end
that can ask (the TUI) passes `ask`, and the user answers per command. Where bubblewrap cannot start,
commands are refused with the reason (the model is told, the user is warned) unless the user chose
`--no-sandbox`; reading files stays available either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .approval import AllowCommands, Answer, ApprovalPolicy, AskUser, DenyAll
from .options import AgentOptions
from .sandbox import BwrapSandbox, CommandRunner, NoSandbox, SandboxConfig, SandboxUnavailable
from .tools import ToolRunner
from .workspace import Workspace

Ask = Callable[[str, tuple[str, ...]], Answer]  # (command, its prefix) -> the user's answer


@dataclass(frozen=True, slots=True)
class ToolSetup:
    """The runner (None: no tools, `--no-tools`) and what the user should be told about it."""

    runner: ToolRunner | None
    warning: str | None = None


def tool_setup(workspace: Workspace, options: AgentOptions, ask: Ask | None = None,
               include_secrets: bool = False) -> ToolSetup:
    """The session's tools from `options`; `ask` puts a command to the user (None: headless)."""
    if not options.tools:
        return ToolSetup(None)
    config = SandboxConfig(allow_network=options.allow_network)
    commands: CommandRunner
    policy: ApprovalPolicy
    if ask is not None:
        policy = AskUser(ask)
    elif options.allow_commands:
        policy = AllowCommands(options.allow_commands)
    else:
        policy = DenyAll()
    warning = None
    if options.sandbox:
        commands = BwrapSandbox(workspace.root, config)
        try:
            commands.probe()
        except SandboxUnavailable as exc:  # every command is then refused by the runner, saying why
            warning = f"the model's commands will not run: {exc}"
    else:
        commands = NoSandbox(workspace.root, config)
        warning = "--no-sandbox: the model's approved commands run unconfined, with your permissions"
    return ToolSetup(ToolRunner(workspace, commands, policy, include_secrets=include_secrets), warning)
