"""The default tokenizer ships small and loads, round-trips any text, and compresses code like a BPE."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from v4.repo_index.tokens import TextTokenizer, TokenizerError, load_tokenizer

REPO_INDEX = Path(__file__).resolve().parents[2] / "repo_index"

SAMPLES = [
    "def f(x):\n\treturn x  # tab-indented\n",
    "int main(void) {\r\n    return 0;\r\n}\r\n",
    'const s = "héllo wörld — ünïcode ✓ 日本語 🙂👍🏽";\n',
    "fn main() {\n    println!(\"{}\", \"🦀\");\n}\n\n\n   \t  \n",
    "<|endoftext|> is text here, not a special token",
    "",
]


def tiny_tokenizer(directory: Path, corpus: list[str]) -> Path:
    """A small byte-level BPE written as `<directory>/tokenizer.json`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def test_shipped_tokenizer_is_small_and_loads() -> None:
    shipped = resources.files("v4.repo_index") / "data" / "tokenizer.json"
    assert len(shipped.read_bytes()) < 5_000_000
    tokenizer = load_tokenizer()
    assert isinstance(tokenizer, TextTokenizer)
    assert tokenizer.source.endswith("tokenizer.json")
    assert len(tokenizer.fingerprint) == 16
    int(tokenizer.fingerprint, 16)
    assert tokenizer.encode("import os\n")


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_exact(text: str) -> None:
    tokenizer = load_tokenizer()
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_encode_batch_equals_encode() -> None:
    tokenizer = load_tokenizer()
    assert tokenizer.encode_batch(SAMPLES) == [tokenizer.encode(text) for text in SAMPLES]
    assert tokenizer.encode_batch([]) == []


def test_no_special_tokens_are_added() -> None:
    tokenizer = load_tokenizer()
    assert tokenizer.encode("") == []
    assert tokenizer.encode_batch([""]) == [[]]


def test_default_compresses_real_source_code() -> None:
    for name in ("languages.py", "tokens.py"):
        text = (REPO_INDEX / name).read_text(encoding="utf-8")
        ids = load_tokenizer().encode(text)
        assert len(text) / len(ids) > 2.5, name  # a trained code BPE; bytes alone would give ~1


def test_directory_loads_its_tokenizer_json(tmp_path: Path) -> None:
    path = tiny_tokenizer(tmp_path, ["def add(a, b):\n    return a + b\n"] * 20)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.source == str(path)
    text = "def add(a, b):\n    return a + b\n"
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert load_tokenizer(path).encode(text) == tokenizer.encode(text)
    assert tokenizer.encode(text) != load_tokenizer().encode(text)


def test_missing_path_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(TokenizerError, match="nope"):
        load_tokenizer(missing)
    with pytest.raises(TokenizerError, match=re.escape(str(tmp_path / "tokenizer.json"))):
        load_tokenizer(tmp_path)  # a directory without a tokenizer.json


@pytest.mark.parametrize("content", [b"{not json", b'{"model": {"type": "Nope"}}', b"\xff\xfe"])
def test_corrupt_json_raises_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.json"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match="broken.json"):
        load_tokenizer(path)


def test_fingerprints_are_stable_and_distinct(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tiny_tokenizer(tmp_path / "a", ["alpha beta"] * 5)
    second = tiny_tokenizer(tmp_path / "b", ["gamma delta"] * 5)
    assert load_tokenizer(first).fingerprint == load_tokenizer(first).fingerprint
    assert load_tokenizer(first).fingerprint != load_tokenizer(second).fingerprint
    assert load_tokenizer().fingerprint == load_tokenizer().fingerprint
    assert load_tokenizer().fingerprint != load_tokenizer(first).fingerprint
