"""The tokenizer that counts a repository's tokens.

repo_index knows a tokenizer only through `encode(str) -> list[int]`: token counts decide what fits in
the context, so they must come from the model's own tokenizer.json when a checkpoint is given. Without
one, a byte-level BPE trained on source code (`data/tokenizer.json`, built offline by
`benchmarks/train_tokenizer.py`) ships with the package, so counting works offline and close to what a
code model would see.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer



class TokenizerError(Exception):
    """A tokenizer.json that is missing, unreadable or not loadable; the message names its path."""


class TextTokenizer:
    """A `tokenizers.Tokenizer` reduced to text in, ids out, with no special tokens added, because
    repo_index counts and packs raw file text."""

    def __init__(self, tokenizer: Tokenizer, fingerprint: str, source: str) -> None:
        self._tokenizer = tokenizer
        self.fingerprint = fingerprint  # keys token caches: same file, same counts
        self.source = source
        self.max_token_bytes = _max_token_bytes(tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids for `text`."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids for each text, encoded in parallel by tokenizers' thread pool."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        """The text behind `ids` (byte-level BPE: exact for ids from `encode`)."""
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"TextTokenizer(source={self.source!r}, fingerprint={self.fingerprint!r})"


def _max_token_bytes(tokenizer: Tokenizer) -> int:
    """The most bytes one token can stand for: text of n bytes has at least n // this many tokens.

    Byte-level BPE spells each byte as one character, so a token's length is its byte count; for
    other models the UTF-8 length of the vocabulary string is an upper bound.
    """
    byte_level = type(tokenizer.decoder).__name__ == "ByteLevel"
    model = [len(t) if byte_level else len(t.encode("utf-8")) for t in tokenizer.get_vocab(with_added_tokens=False)]
    added = [len(t.content.encode("utf-8")) for t in tokenizer.get_added_tokens_decoder().values()]
    return max(model + added, default=0)


def _from_bytes(data: bytes, source: str) -> TextTokenizer:
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as error:  # tokenizers raises a bare Exception for bad JSON or an unknown model
        raise TokenizerError(f"cannot load tokenizer {source}: {error}") from error
    return TextTokenizer(tokenizer, hashlib.sha256(data).hexdigest()[:16], source)


def load_tokenizer(model_path: str | os.PathLike[str] | None = None) -> TextTokenizer:
    """The tokenizer for a checkpoint directory (its tokenizer.json), a tokenizer.json file, or, for
    None, the packaged default."""
    if model_path is None:
        resource = resources.files("v4.repo_index") / "data" / "tokenizer.json"
        source = str(resource)
        try:
            data = resource.read_bytes()
        except OSError as error:
            raise TokenizerError(f"cannot read the packaged tokenizer {source}: {error}") from error
        return _from_bytes(data, source)
    path = Path(model_path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        data = path.read_bytes()
    except OSError as error:
        raise TokenizerError(f"cannot read tokenizer {path}: {error.strerror or error}") from error
    return _from_bytes(data, str(path))
