"""Chat formats: DeepSeek V4's encoding (exact strings), checkpoint Jinja templates, reasoning splits, and
the demo checkpoint's tokenizer speaking V4's tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from v4.agent.chat_format import (
    ASSISTANT,
    BOS,
    EOS,
    REASONING_EFFORT_MAX,
    THINK_END,
    THINK_START,
    USER,
    V4_SPECIAL_TOKENS,
    ChatFormatError,
    DeepSeekV4Format,
    JinjaTemplateFormat,
    Message,
    chat_format_for,
    split_reasoning,
)
from v4.agent.dsml import DSML

from tests.conftest import TOKENIZER_JSON, tiny_chat_checkpoint

V4 = DeepSeekV4Format()
HELLO = [Message("user", "hello"), Message("assistant", "Hello! I am DeepSeek.", reasoning="thinking..."),
         Message("user", "1+1=?")]
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_the_special_tokens_are_deepseeks() -> None:
    # `｜DSML｜` (tool calls, agent/dsml.py) is one token in DeepSeek's tokenizer, so it is one here too.
    assert V4_SPECIAL_TOKENS == ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                                 "<think>", "</think>", "｜DSML｜")
    assert (BOS, EOS, USER, ASSISTANT, THINK_START, THINK_END, DSML) == V4_SPECIAL_TOKENS
    assert V4.name == "deepseek-v4" and V4.stop_strings == ("<｜end▁of▁sentence｜>",)


def test_single_turn_chat_and_thinking() -> None:
    one = [Message("user", "hello")]
    assert V4.render(one) == "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>"
    assert V4.render(one, thinking=True) == "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜><think>"


def test_system_prompt_is_bare_text_after_bos() -> None:
    messages = [Message("system", "You are terse."), Message("user", "Hi there")]
    assert V4.render(messages) == "<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi there<｜Assistant｜></think>"
    assert V4.render(messages, thinking=True) == (
        "<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi there<｜Assistant｜><think>")


def test_multi_turn_drops_history_reasoning() -> None:
    """DeepSeek's published example (thinking mode): the earlier turn opens with `</think>` and loses
    its reasoning; only the turn to be answered opens with `<think>`."""
    assert V4.render(HELLO, thinking=True) == (
        "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.<｜end▁of▁sentence｜>"
        "<｜User｜>1+1=?<｜Assistant｜><think>")
    assert V4.render(HELLO) == (
        "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.<｜end▁of▁sentence｜>"
        "<｜User｜>1+1=?<｜Assistant｜></think>")


def test_multi_turn_with_system_and_two_earlier_turns() -> None:
    messages = [Message("system", "S"), Message("user", "a"), Message("assistant", "b", "r1"),
                Message("user", "c"), Message("assistant", "d", "r2"), Message("user", "e")]
    assert V4.render(messages, thinking=True) == (
        "<｜begin▁of▁sentence｜>S<｜User｜>a<｜Assistant｜></think>b<｜end▁of▁sentence｜>"
        "<｜User｜>c<｜Assistant｜></think>d<｜end▁of▁sentence｜><｜User｜>e<｜Assistant｜><think>")


def test_final_assistant_turn_keeps_its_reasoning_only_in_thinking_mode() -> None:
    """The turn after the last user message is the one being answered: DeepSeek keeps its reasoning."""
    answered = HELLO[:2]
    assert V4.render(answered, thinking=True) == (
        "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜><think>thinking...</think>Hello! I am DeepSeek."
        "<｜end▁of▁sentence｜>")
    assert V4.render(answered) == (
        "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.<｜end▁of▁sentence｜>")
    assert V4.render(answered, add_generation_prompt=False) == V4.render(answered)


def test_without_generation_prompt_the_last_user_turn_is_left_open() -> None:
    assert V4.render(HELLO, add_generation_prompt=False, thinking=True) == (
        "<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜></think>Hello! I am DeepSeek.<｜end▁of▁sentence｜>"
        "<｜User｜>1+1=?")


def test_history_renders_as_a_prefix_of_the_next_prompt_in_chat_mode() -> None:
    """What the embedded backend relies on to reuse its decode state between turns."""
    first = V4.render([Message("system", "S"), Message("user", "q")])
    second = V4.render([Message("system", "S"), Message("user", "q"), Message("assistant", "a"),
                        Message("user", "more")])
    assert second.startswith(first)


def test_reasoning_effort_max_prefixes_thinking_prompts_only() -> None:
    assert REASONING_EFFORT_MAX.startswith("Reasoning Effort: Absolute maximum with no shortcuts permitted.\n")
    assert REASONING_EFFORT_MAX.endswith("no assumption is left unchecked.\n\n")
    messages = [Message("system", "S"), Message("user", "q")]
    assert DeepSeekV4Format("max").render(messages, thinking=True) == (
        "<｜begin▁of▁sentence｜>" + REASONING_EFFORT_MAX + "S<｜User｜>q<｜Assistant｜><think>")
    assert DeepSeekV4Format("max").render(messages) == V4.render(messages)
    assert DeepSeekV4Format("high").render(messages, thinking=True) == V4.render(messages, thinking=True)
    with pytest.raises(ChatFormatError, match="reasoning_effort"):
        DeepSeekV4Format("low")  # type: ignore[arg-type]


@pytest.mark.parametrize(("messages", "error"), [
    ([], "empty"),
    ([Message("user", "a"), Message("system", "S")], "system message may only come first"),
    ([Message("user", "a"), Message("user", "b")], "expected an assistant message after user, got user"),
    ([Message("assistant", "a")], "expected a user message after the start, got assistant"),
    ([Message("system", "S"), Message("assistant", "a")], "expected a user message after the start"),
    ([Message("user", "a"), Message("assistant", "b"), Message("assistant", "c")], "message 2: expected a user"),
    ([Message("user", "a", reasoning="r")], "only assistant messages carry reasoning"),
    ([Message("robot", "a")], "unknown role 'robot'"),  # type: ignore[arg-type]
    ([Message("tool", "a", tool_call_id="c")], "expected a user message after the start, got tool"),
])
def test_bad_conversations_are_refused(messages: list[Message], error: str) -> None:
    for chat_format in (V4, JinjaTemplateFormat(CHATML)):
        with pytest.raises(ChatFormatError, match=error):
            chat_format.render(messages)


def test_a_lone_system_message_renders() -> None:
    assert V4.render([Message("system", "S")]) == "<｜begin▁of▁sentence｜>S"


@pytest.mark.parametrize(("text", "expected"), [
    ("<think>a</think>b", ("a", "b")),
    ("</think>b", (None, "b")),
    ("b", (None, "b")),
    ("<think>abc", ("abc", "")),
    ("a</think>b", ("a", "b")),  # thinking mode: the prompt already opened <think>
    ("\n<think>a</think>\n\nb", ("a", "\n\nb")),
    ("<think></think>b", (None, "b")),
    ("answer<think>second thoughts", ("second thoughts", "answer")),
    ("<think>a</think>b<｜end▁of▁sentence｜>junk", ("a", "b")),
])
def test_split_reasoning(text: str, expected: tuple[str | None, str]) -> None:
    assert split_reasoning(text) == expected


def test_split_reasoning_after_a_think_prompt_treats_an_unclosed_completion_as_thinking() -> None:
    assert split_reasoning("still thinking", thinking=True) == ("still thinking", "")
    assert split_reasoning("still thinking") == (None, "still thinking")
    assert split_reasoning("r</think>answer", thinking=True) == ("r", "answer")


def _write_config(directory: Path, **config: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def test_chat_template_from_tokenizer_config(tmp_path: Path) -> None:
    checkpoint = _write_config(tmp_path / "ck", chat_template="{{ bos_token }}" + CHATML,
                               bos_token={"content": "<s>", "special": True}, eos_token="<|im_end|>")
    chat_format = chat_format_for(checkpoint)
    assert isinstance(chat_format, JinjaTemplateFormat)
    assert chat_format.stop_strings == ("<|im_end|>",)
    messages = [Message("system", "S"), Message("user", "hi"), Message("assistant", "yo", reasoning="dropped"),
                Message("user", "bye")]
    assert chat_format.render(messages) == (
        "<s><|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
        "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n")
    assert chat_format.render(messages, add_generation_prompt=False).endswith("bye<|im_end|>\n")


def test_named_templates_use_default(tmp_path: Path) -> None:
    templates = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": CHATML}]
    chat_format = chat_format_for(_write_config(tmp_path / "ck", chat_template=templates))
    assert chat_format.render([Message("user", "hi")]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    no_default = _write_config(tmp_path / "other", chat_template=[{"name": "tool_use", "template": "T"}])
    with pytest.raises(ChatFormatError, match="no 'default'"):
        chat_format_for(no_default)


def test_template_helpers_and_thinking_flag(tmp_path: Path) -> None:
    template = ("{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}"
                "{{ messages | tojson }}|{{ enable_thinking }}|{{ thinking }}")
    chat_format = JinjaTemplateFormat(template)
    assert chat_format.render([Message("user", "ü")], thinking=True) == '[{"role": "user", "content": "ü"}]|True|True'
    assert chat_format.stop_strings == ()
    with pytest.raises(ChatFormatError, match="user first"):
        chat_format.render([Message("system", "S"), Message("user", "u")])
    with pytest.raises(ChatFormatError, match="does not parse"):
        JinjaTemplateFormat("{% for %}")


def test_jinja_matches_transformers_apply_chat_template() -> None:
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    template = "{{ bos_token }}" + CHATML + "{% if add_generation_prompt %}{{ eos_token }}{% endif %}"
    reference = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(TOKENIZER_JSON)),
                                                     chat_template=template, bos_token="<s>", eos_token="</s>")
    messages = [Message("system", "Be brief."), Message("user", "hi  there\n"), Message("assistant", "ok"),
                Message("user", "bye")]
    ours = JinjaTemplateFormat(template, bos_token="<s>", eos_token="</s>")
    for add in (True, False):
        expected = reference.apply_chat_template([{"role": m.role, "content": m.content} for m in messages],
                                                 tokenize=False, add_generation_prompt=add)
        assert ours.render(messages, add_generation_prompt=add) == expected


def test_v4_is_the_default_format(tmp_path: Path) -> None:
    assert isinstance(chat_format_for(None), DeepSeekV4Format)
    assert isinstance(chat_format_for(tmp_path), DeepSeekV4Format)
    assert isinstance(chat_format_for(_write_config(tmp_path / "ck", eos_token=EOS)), DeepSeekV4Format)


def test_chat_template_jinja_file(tmp_path: Path) -> None:
    checkpoint = _write_config(tmp_path / "ck", eos_token="<|im_end|>")
    (checkpoint / "chat_template.jinja").write_text(CHATML)
    chat_format = chat_format_for(checkpoint)
    assert isinstance(chat_format, JinjaTemplateFormat) and chat_format.stop_strings == ("<|im_end|>",)


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_chat_checkpoint(tmp_path_factory.mktemp("demo"), seed=0)


def test_demo_checkpoint_encodes_v4_tokens_as_single_ids(demo_checkpoint: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(demo_checkpoint / "tokenizer.json"))
    ids = {token: tokenizer.token_to_id(token) for token in V4_SPECIAL_TOKENS}
    assert None not in ids.values() and len(set(ids.values())) == len(ids)
    messages = [Message("system", "You edit code."), Message("user", "hello  wörld\n"),
                Message("assistant", "Hi!", reasoning="hmm"), Message("user", "1+1=?")]
    for thinking in (False, True):
        text = chat_format_for(demo_checkpoint).render(messages, thinking=thinking)
        encoded = tokenizer.encode(text, add_special_tokens=False).ids
        for token, token_id in ids.items():
            assert encoded.count(token_id) == text.count(token), token
        assert tokenizer.decode(encoded, skip_special_tokens=False) == text
    # Decoding as the backend does (special tokens skipped) keeps the markers split_reasoning needs.
    reply = tokenizer.encode("plan</think>answer<｜end▁of▁sentence｜>", add_special_tokens=False).ids
    assert split_reasoning(tokenizer.decode(reply)) == ("plan", "answer")


def test_demo_checkpoint_config_names_v4_bos_and_eos(demo_checkpoint: Path) -> None:
    from tokenizers import Tokenizer

    from v4.model.random_checkpoint import PRESETS, V4_BOS, V4_EOS, V4_MARKERS

    assert (V4_BOS, V4_EOS, *V4_MARKERS) == V4_SPECIAL_TOKENS
    tokenizer = Tokenizer.from_file(str(demo_checkpoint / "tokenizer.json"))
    config = json.loads((demo_checkpoint / "config.json").read_text())
    assert config["eos_token_id"] == tokenizer.token_to_id("<｜end▁of▁sentence｜>")
    assert config["bos_token_id"] == tokenizer.token_to_id("<｜begin▁of▁sentence｜>")
    tokenizer_config = json.loads((demo_checkpoint / "tokenizer_config.json").read_text())
    assert "chat_template" not in tokenizer_config
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == (BOS, EOS)
    assert isinstance(chat_format_for(demo_checkpoint), DeepSeekV4Format)
    for preset in PRESETS.values():
        assert preset["vocab_size"] % 64 == 0 and preset["vocab_size"] >= tokenizer.get_vocab_size()
