"""The incremental detokenizer on literal token streams: a byte-level fake tokenizer, so a UTF-8
character split over two tokens, stop ids, stop strings and the step limit are each one case."""

from __future__ import annotations

from collections.abc import Sequence

from v4.model.detokenizer import Detokenizer, stop_token_ids

STOP = 0  # a stop id


class Bytes:
    """Token id = one byte (1..255); decoding replaces a split character with U+FFFD, as tokenizers do."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", "replace")

    def token_to_id(self, text: str) -> int | None:
        return ord(text) if len(text) == 1 else None


def _run(text: bytes, stops: Sequence[str] = (), steps: int = 100) -> tuple[list[str], Detokenizer]:
    answer = Detokenizer(Bytes(), stops, {STOP}, steps)
    pieces = []
    for token in text:
        pieces.extend(answer.take(token))
        if answer.finished:
            break
    return pieces, answer


def test_plain_tokens_stream_one_piece_each() -> None:
    pieces, answer = _run(b"abc")
    assert pieces == ["a", "b", "c"] and not answer.finished


def test_a_split_character_waits_for_its_rest() -> None:
    pieces, _ = _run("xé!".encode())
    assert pieces == ["x", "é", "!"]  # nothing for the first byte of é


def test_a_stop_id_ends_the_answer_and_is_not_part_of_it() -> None:
    pieces, answer = _run(bytes([ord("a"), STOP, ord("b")]))
    assert pieces == ["a"] and answer.finished and answer.generated == [ord("a")]


def test_a_stop_string_cuts_the_text_before_it() -> None:
    pieces, answer = _run(b"ab!cd", stops=["!"])
    assert "".join(pieces) == "ab" and answer.finished and answer.generated == list(b"ab!")


def test_a_stop_string_inside_the_last_token_cuts_what_came_before_it_in_that_token() -> None:
    class Words(Bytes):
        def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
            return "".join({1: "say ", 2: "hi<end>more"}[i] for i in ids)

    answer = Detokenizer(Words(), ["<end>"], set(), 10)
    assert answer.take(1) == ["say "] and answer.take(2) == ["hi"] and answer.finished


def test_the_last_step_flushes_a_held_back_split_character() -> None:
    pieces, answer = _run("aé".encode()[:2], steps=2)
    assert answer.finished and "".join(pieces) == "a\ufffd"


def test_no_steps_is_finished_before_any_token() -> None:
    assert Detokenizer(Bytes(), (), set(), 0).finished


def test_stop_ids_are_the_eos_ids_and_the_one_token_stop_strings() -> None:
    assert stop_token_ids(Bytes(), [1, 2], ["!", "<end>"]) == {1, 2, ord("!")}
    assert stop_token_ids(Bytes(), 7, []) == {7} and stop_token_ids(Bytes(), None, []) == set()


def test_special_tokens_stay_in_the_text() -> None:
    """A real V4 tokenizer marks ｜DSML｜ special; skipping special tokens would drop the marker and every
    tool call with it (the stop ids never reach the text anyway)."""
    from tokenizers import Tokenizer, models

    tokenizer = Tokenizer(models.WordLevel({"a": 0, "<eos>": 1}, unk_token="a"))
    tokenizer.add_special_tokens(["｜DSML｜"])
    marker = tokenizer.token_to_id("｜DSML｜")
    answer = Detokenizer(tokenizer, (), {1}, 10)
    pieces = [piece for token in (0, marker, 0, 1) for piece in answer.take(token)]
    assert "｜DSML｜" in "".join(pieces) and "<eos>" not in "".join(pieces) and answer.finished
