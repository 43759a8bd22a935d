"""Typed options the front ends (cli/, tui/) hand to the agent: which model answers and how the
embedded engine runs. The CLI builds them from its arguments; nothing below `cli/` sees argparse."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

KV_FORMATS = ("float", "fp8")


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How the embedded engine runs: `model.load`'s keyword options."""

    device: str | None = None  # None: cuda when present
    kv_format: str = "float"  # "float": the model's dtype; "fp8": DeepSeek's layout (1.8x smaller)
    offload_experts: int | None = None  # routed experts per layer cached on the GPU, the rest on the host
    cpu_threads: int | None = None  # torch threads of a CPU engine (None: the engine's choice from the load)
    parallel: int | None = None  # processes (GPUs) the model runs over (None: every GPU when it does not fit one)
    gpu_memory_gb: float | None = None  # GPU memory the engine may use; weights placed to fit (None: what is free)

    def __post_init__(self) -> None:
        if self.kv_format not in KV_FORMATS:
            raise ValueError(f"kv_format must be one of {', '.join(KV_FORMATS)}, not {self.kv_format!r}")
        if self.offload_experts is not None and self.offload_experts < 1:
            raise ValueError(f"offload_experts must be at least 1, not {self.offload_experts}")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError(f"cpu_threads must be at least 1, not {self.cpu_threads}")
        if self.parallel is not None and self.parallel < 1:
            raise ValueError(f"parallel must be at least 1, not {self.parallel}")
        if self.gpu_memory_gb is not None and not self.gpu_memory_gb > 0:
            raise ValueError(f"gpu_memory_gb must be positive, not {self.gpu_memory_gb}")
        if self.gpu_memory_gb is not None and self.offload_experts is not None:
            raise ValueError("--gpu-memory plans the experts on the GPU and --offload-experts fixes them: give one")

    def load_options(self) -> dict[str, object]:
        """The keyword arguments of `v4.model.load`."""
        return {"device": self.device, "kv_format": self.kv_format, "offload_experts": self.offload_experts,
                "cpu_threads": self.cpu_threads, "ranks": self.parallel, "gpu_memory_gb": self.gpu_memory_gb}


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """Which model answers (at most one of `model`, `endpoint`, `replay`; none: the demo checkpoint)
    and how much of the repository goes into its context."""

    model: Path | None = None  # checkpoint directory for the embedded engine
    endpoint: str | None = None  # an OpenAI-compatible server
    api_key: str | None = None
    endpoint_model: str | None = None  # the model's name at the endpoint (None: its first)
    replay: Path | None = None  # scripted answers, for tests and demos
    engine: EngineOptions = field(default_factory=EngineOptions)
    use_store: bool = True  # read and write the prefix-state store (embedded engine only)
    store_dir: Path | None = None  # None: $V4_STORE_DIR or the user cache dir
    budget: int | None = None  # repository tokens in the context (None: the backend's default)
    include_secrets: bool = False  # files that look like credentials go into the context too

    def __post_init__(self) -> None:
        if self.budget is not None and self.budget < 1:
            raise ValueError(f"budget must be positive, not {self.budget}")

    @property
    def chosen(self) -> list[str]:
        """The model sources named: a subset of "model", "endpoint", "replay"."""
        return [name for name in ("model", "endpoint", "replay") if getattr(self, name)]

    @property
    def names_no_model(self) -> bool:
        """True when no model is named at all: the TUI then makes and uses the demo checkpoint."""
        return not self.chosen

    @property
    def embedded(self) -> bool:
        """True when the embedded engine answers (a checkpoint directory, or the demo's)."""
        return not (self.endpoint or self.replay)

    def with_model(self, model: Path) -> BackendOptions:
        """These options with `model` as the checkpoint (the demo checkpoint, once it is made)."""
        return dataclasses.replace(self, model=model)


EFFORTS = ("high", "max")


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """How the agent works a turn: thinking first (on by default, as V4 was trained), and tools (commands
    in a sandbox under the user's approval, reading files the plan left out)."""

    thinking: bool = True
    effort: str | None = None  # "high" or "max" (None: the model's default)
    tools: bool = True
    allow_commands: tuple[str, ...] = ()  # headless: only commands matching one of these globs run
    allow_network: bool = False  # commands reach the network only when the user says so
    sandbox: bool = True  # False only by the user's explicit --no-sandbox

    def __post_init__(self) -> None:
        if self.effort not in (None, *EFFORTS):
            raise ValueError(f"effort must be one of {', '.join(EFFORTS)}, not {self.effort!r}")


@dataclass(frozen=True, slots=True)
class ConversationOptions:
    """Which saved conversation a front end continues (`.v4/sessions/`, agent/sessions.py), and whether
    this one is saved: `continue_last` (--continue) or `resume` (--resume ID), not both."""

    continue_last: bool = False
    resume: str | None = None
    save: bool = True

    def __post_init__(self) -> None:
        if self.continue_last and self.resume:
            raise ValueError("--continue and --resume name different sessions: give one")
