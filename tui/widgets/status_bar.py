"""StatusBar: the backend, the model and how fast it answered, on one line."""

from __future__ import annotations

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget


class StatusBar(Widget):
    """Backend and model (with a warning for random weights), tokens/s, time to first token, the
    engine's decode-state size, watch on/off, where offloaded weights live with the expert hit rate, a
    continued conversation's reused tokens and pending changes. Values are bound from SessionState."""

    COMPONENT_CLASSES = {"status-bar--warning", "status-bar--dim"}
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    StatusBar > .status-bar--warning { color: $text-warning; text-style: bold; }
    StatusBar > .status-bar--dim { color: $text-muted; }
    """

    backend = reactive("starting…")
    model = reactive("")
    random_weights = reactive(False)
    tokens_per_s: reactive[float | None] = reactive(None)
    ttft_s: reactive[float | None] = reactive(None)
    kv_bytes: reactive[int | None] = reactive(None)
    watching = reactive(False)
    pending_files = reactive(0)
    busy = reactive(False)
    reused_tokens: reactive[int | None] = reactive(None)
    offload = reactive("")  # where the weights live and the hit rate, when experts are offloaded

    def render(self) -> Content:
        warning = self.get_visual_style("status-bar--warning")
        dim = self.get_visual_style("status-bar--dim")
        separator = (" │ ", dim)
        rate = "—" if self.tokens_per_s is None else f"{self.tokens_per_s:.0f}" if self.tokens_per_s >= 10 \
            else f"{self.tokens_per_s:.1f}"
        parts: list[str | tuple[str, object]] = [f"{self.backend} {self.model}".strip()]
        if self.random_weights:
            parts += [" ", ("random weights", warning)]
        parts += [separator, f"{rate} tok/s", separator,
                  "TTFT " + ("—" if self.ttft_s is None else f"{self.ttft_s:.2f}s"), separator,
                  "KV " + ("n/a" if self.kv_bytes is None else _size(self.kv_bytes)), separator,
                  "watch " + ("on" if self.watching else "off")]
        if self.offload:
            parts += [separator, f"offload: {self.offload}"]
        if self.reused_tokens is not None:
            parts += [separator, f"resumed: {self.reused_tokens:,} tokens reused"]
        if self.busy:
            parts += [separator, ("working…", warning)]
        if self.pending_files:
            parts += [separator, (f"{self.pending_files} pending", warning)]
        return Content.assemble(*parts)


def _size(num_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f}{unit}" if unit == "B" else f"{num_bytes:.1f}{unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f}GB"
