"""`v4 model init|info` and `v4 generate`: the smallest end-to-end use of the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from v4.cli.main import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny"
    assert main(["model", "init", str(path), "--preset", "tiny", "--seed", "3"]) == 0
    return path


def test_init_writes_config_weights_and_tokenizer(tiny_dir: Path) -> None:
    assert {p.name for p in tiny_dir.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert json.loads((tiny_dir / "config.json").read_text())["model_type"] == "deepseek_v4"


def test_init_files_share_one_mode_and_are_marked_random(tiny_dir: Path) -> None:
    """Issue 24: model.safetensors was written 0600 beside 0644 siblings; the directory says its
    weights are random, so front ends can say its answers are noise."""
    modes = {p.name: p.stat().st_mode & 0o777 for p in tiny_dir.iterdir()}
    assert len(set(modes.values())) == 1, modes
    assert "RANDOM_WEIGHTS" in modes


def test_generate_without_a_model_names_the_option_and_the_variable(monkeypatch, capsys) -> None:
    monkeypatch.delenv("V4_MODEL", raising=False)
    assert main(["generate", "hi"]) == 2
    assert "needs --model DIR (or $V4_MODEL)" in capsys.readouterr().err


def test_init_refuses_a_non_empty_directory(tiny_dir: Path, capsys) -> None:
    before = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert main(["model", "init", str(tiny_dir)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == before


def test_info_reports_sizes_layers_and_state(tiny_dir: Path, capsys) -> None:
    assert main(["model", "info", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "active per token" in out
    assert "1 sliding_attention, 2 compressed_sparse_attention, 1 heavily_compressed_attention" in out
    assert "F32" in out and "decode state/token" in out


def test_info_on_a_v4_flash_config_gives_the_published_sizes(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_v4"}))  # defaults = V4-Flash
    assert main(["model", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "284,325,879,255" in out  # published: 284B total, 13B active
    assert "3.68 GB FP8" in out and "~3.7 GB" in out  # 584-byte entry rows, 132-byte indexer keys


def test_info_on_a_bad_config_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["model", "info", str(tmp_path)]) == 1
    assert "model_type" in capsys.readouterr().err


def test_generate_streams_the_same_greedy_tokens_as_the_engine(tiny_dir: Path, capsys) -> None:
    from v4 import model

    assert main(["generate", "--model", str(tiny_dir), "--max-new-tokens", "6", "def add(a, b):"]) == 0
    out = capsys.readouterr().out
    engine = model.load(tiny_dir, device="cpu")
    prompt = engine.tokenizer.encode("def add(a, b):", add_special_tokens=False).ids
    expected = engine.tokenizer.decode(list(engine.generate(prompt, 6)))
    assert out == expected + "\n"


def test_generate_with_offloaded_experts_streams_the_same_tokens(tiny_dir: Path, capsys) -> None:
    args = ["generate", "--model", str(tiny_dir), "--max-new-tokens", "6", "def add(a, b):"]
    assert main(args) == 0
    resident = capsys.readouterr().out
    assert main([*args, "--offload-experts", "3"]) == 0
    assert capsys.readouterr().out == resident


def test_engine_options_the_model_cannot_take_are_clear_errors(tiny_dir: Path, capsys) -> None:
    base = ["generate", "--model", str(tiny_dir), "hi"]
    assert main([*base, "--kv-format", "fp8"]) == 1  # the tiny preset's head_dim is not the FP8 layout's 512
    assert "head_dim" in capsys.readouterr().err
    assert main([*base, "--offload-experts", "1"]) == 1
    assert "offload_experts" in capsys.readouterr().err


def test_generate_without_a_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["generate", "--model", str(tmp_path / "missing"), "hi"]) == 1
    assert "missing" in capsys.readouterr().err


def _line(out: str, prefix: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(prefix))


def test_an_fp8_checkpoint_reports_its_stored_dtypes_and_generates(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "fp8"
    assert main(["model", "init", str(path), "--preset", "tiny", "--seed", "3", "--fp8"]) == 0
    assert "FP8 weights, FP4 routed experts" in capsys.readouterr().out
    assert main(["model", "info", str(path)]) == 0
    out = capsys.readouterr().out
    dtypes = _line(out, "tensor dtypes")
    assert all(f"{dtype}: " in dtypes for dtype in ("F8_E4M3", "F8_E8M0", "I8", "BF16", "F32"))
    assert _line(out, "quantization") == ("quantization       fp8 e4m3 weights, 128x128 blocks, ue8m0 scales; "
                                          "routed experts fp4")
    assert main(["model", "info", str(tiny_dir)]) == 0  # the same preset unquantised: the same sizes
    plain = capsys.readouterr().out
    assert _line(out, "parameters") == _line(plain, "parameters") and "quantization" not in plain
    assert main(["generate", "--model", str(path), "--max-new-tokens", "3", "x"]) == 0
    assert capsys.readouterr().out.endswith("\n")
