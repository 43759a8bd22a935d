"""Sampled token ids -> the text pieces to stream: the incremental detokenizer with stop ids and stop
strings (vLLM keeps its detokenizer beside the engine the same way). Shared by `Runner.generate` and
the batch scheduler, so an answer decoded alone and one decoded in a batch end at the same place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer


class Detokenizer:
    """One answer's sampled tokens -> the text pieces to stream, and when it ends: a stop id (not part
    of the answer), a stop string (the text is cut before it), or `steps` tokens. A piece is streamed
    once its token decodes to whole characters (a split UTF-8 character waits for its rest)."""

    def __init__(self, tokenizer: Tokenizer, stop_strings: Sequence[str], stop_ids: set[int], steps: int) -> None:
        self.tokenizer, self.stop_strings, self.stop_ids, self.steps = tokenizer, stop_strings, stop_ids, steps
        self.generated: list[int] = []
        self.printed = ""
        self.finished = steps <= 0

    def take(self, token: int) -> list[str]:
        """The pieces `token` completes (possibly none); sets `finished`."""
        if token in self.stop_ids:
            self.finished = True
            return []
        self.generated.append(token)
        # special tokens stay: a real V4 tokenizer marks ｜DSML｜ special, and tool calls are parsed from the text
        text = self.tokenizer.decode(self.generated, skip_special_tokens=False)
        stop_at = _first_stop(text, self.stop_strings)
        if stop_at is not None:
            self.finished = True
            return [text[len(self.printed):stop_at]] if stop_at > len(self.printed) else []
        pieces = []
        if not text.endswith("\ufffd"):
            pieces.append(text[len(self.printed):])
            self.printed = text
        if len(self.generated) == self.steps:
            self.finished = True
            if len(text) > len(self.printed):  # what a split character held back
                pieces.append(text[len(self.printed):])
        return pieces


def stop_token_ids(tokenizer: Tokenizer, eos_token_id: int | list[int] | None, stop_strings: Sequence[str]) -> set[int]:
    """The ids that end an answer: the checkpoint's EOS ids and every stop string that is one token."""
    ids = set(eos_token_id if isinstance(eos_token_id, list) else [] if eos_token_id is None else [eos_token_id])
    for text in stop_strings:
        token = tokenizer.token_to_id(text)
        if token is not None:
            ids.add(token)
    return ids


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None
