"""Masks: default policy against TRL's `{% generation %}` training templates, and the policy switches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.encoders.hf import encode_batch
from pipeline.stages.mask import IGNORE_INDEX, message_regions, token_labels, trained_messages
from pipeline.stages.render import Renderer, renderer_args
from pipeline.tokenizer import special_token_ids
from schemas.config import MaskConfig
from schemas.records import Message
from tests.chats import ALL, PLAIN, WITH_SYSTEM, WITH_TOOLS, conversation, hf_messages
from tests.conftest import demo_tokenizer, real_tokenizer


def labels_for(tokenizer, conv, policy=MaskConfig(), template=None):
    renderer = Renderer(template or tokenizer.chat_template, **renderer_args(tokenizer))
    chosen = trained_messages(conv, policy)
    rendered = renderer(conv, frozenset(chosen))
    (enc,) = encode_batch(tokenizer, [rendered.text])
    regions = message_regions(rendered, chosen, train_eot=policy.train_end_of_turn)
    return enc.input_ids, token_labels(enc.input_ids, enc.spans, rendered, regions,
                                       special_ids=frozenset(special_token_ids(tokenizer).tolist()))


def trained_text(tokenizer, ids, labels) -> list[str]:
    """The trained tokens, decoded run by run."""
    runs, current = [], []
    for token, label in zip(ids.tolist(), labels.tolist()):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def _trl_template(name: str) -> str:
    import trl

    path = Path(trl.__file__).parent / "chat_templates" / name
    if not path.exists():
        pytest.skip(f"this TRL has no {name}")
    return path.read_text()


def test_default_trains_each_assistant_answer_and_its_end_of_turn_chatml():
    tokenizer = real_tokenizer("qwen2.5")
    ids, labels = labels_for(tokenizer, WITH_SYSTEM)
    assert trained_text(tokenizer, ids, labels) == [
        "Seven.  <|im_end|>",
        "十一是一个质数。\n它只能被1和自身整除。<|im_end|>",
    ]


def test_glm4_trains_what_follows_the_generation_prompt_through_the_next_role_token():
    """After `<|assistant|>` GLM-4 writes its metadata line (`\n`, or a tool name) and then the content."""
    tokenizer = real_tokenizer("glm4")
    ids, labels = labels_for(tokenizer, WITH_SYSTEM)
    assert trained_text(tokenizer, ids, labels) == ["\nSeven.  <|user|>", "\n十一是一个质数。\n它只能被1和自身整除。"]


def test_tool_call_turn_is_trained_from_its_name_through_end_of_turn():
    tokenizer = real_tokenizer("qwen2.5")
    ids, labels = labels_for(tokenizer, WITH_TOOLS)
    runs = trained_text(tokenizer, ids, labels)
    assert runs[0] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call><|im_end|>'
    assert runs[1] == "Yes: -3 °C and clear skies in Beijing.<|im_end|>"


@pytest.mark.parametrize("conv", [c for c in ALL if not c.tools], ids=lambda c: c.id)  # Llama 3.0: no tool calls
def test_llama3_default_mask_equals_trl_training_template(conv):
    tokenizer = real_tokenizer("llama3")
    ours_ids, ours = labels_for(tokenizer, conv)
    reference = tokenizer.apply_chat_template(
        hf_messages(conv), chat_template=_trl_template("llama3_training.jinja"), tokenize=True,
        return_dict=True, return_assistant_tokens_mask=True,
    )
    assert ours_ids.tolist() == reference["input_ids"]
    assert ((ours != IGNORE_INDEX).astype(int)).tolist() == reference["assistant_masks"]


@pytest.mark.parametrize("conv", [PLAIN, WITH_SYSTEM, WITH_TOOLS], ids=lambda c: c.id)
def test_qwen25_default_mask_is_trl_mask_less_the_newlines_around_the_answer(conv):
    """TRL's qwen2_5 training template also trains the '\\n' after the role header and after <|im_end|>; those
    are template text the model never has to produce, so the default policy leaves them out."""
    tokenizer = real_tokenizer("qwen2.5")
    ours_ids, ours = labels_for(tokenizer, conv)
    reference = tokenizer.apply_chat_template(
        hf_messages(conv), tools=list(conv.tools) if conv.tools else None,
        chat_template=_trl_template("qwen2_5_training.jinja"), tokenize=True,
        return_dict=True, return_assistant_tokens_mask=True,
    )
    assert ours_ids.tolist() == reference["input_ids"]
    trl_mask = np.array(reference["assistant_masks"], dtype=bool)
    our_mask = ours != IGNORE_INDEX
    assert not np.any(our_mask & ~trl_mask)
    extra = [tokenizer.decode([t]) for t in ours_ids[trl_mask & ~our_mask].tolist()]
    assert extra and all(piece == "\n" for piece in extra)


def test_roles_to_train_last_turn_only_and_per_message_override():
    tokenizer = demo_tokenizer()
    conv = conversation(
        Message(role="user", content="first question"),
        Message(role="assistant", content="first answer"),
        Message(role="user", content="second question"),
        Message(role="assistant", content="second answer", loss=False),
        Message(role="user", content="third question"),
        Message(role="assistant", content="third answer"),
    )
    def runs(policy):
        ids, labels = labels_for(tokenizer, conv, policy)
        return [r.replace("<|user|>", "").strip() for r in trained_text(tokenizer, ids, labels)]

    assert runs(MaskConfig()) == ["first answer", "third answer"]
    assert runs(MaskConfig(last_turn_only=True)) == ["third answer"]
    assert runs(MaskConfig(roles_to_train=("user", "assistant"), train_end_of_turn=False)) == [
        "first question", "first answer", "second question", "third question", "third answer"]
    ids, labels = labels_for(tokenizer, conv, MaskConfig(train_end_of_turn=False))
    assert trained_text(tokenizer, ids, labels) == ["\nfirst answer", "\nthird answer"]


def test_labels_are_the_tokens_where_trained_and_ignore_elsewhere():
    tokenizer = demo_tokenizer()
    ids, labels = labels_for(tokenizer, WITH_SYSTEM)
    trained = labels != IGNORE_INDEX
    assert np.array_equal(labels[trained], ids[trained])
    assert trained.any() and (~trained).any()


def test_a_character_split_over_several_byte_tokens_is_trained_whole():
    tokenizer = demo_tokenizer()
    answer = "好的～🙂"  # rare characters: several byte-level tokens each
    conv = conversation(Message(role="user", content="hi"), Message(role="assistant", content=answer))
    ids, labels = labels_for(tokenizer, conv, MaskConfig(train_end_of_turn=False))
    assert trained_text(tokenizer, ids, labels) == ["\n" + answer]
    ids, labels = labels_for(tokenizer, conv)
    assert trained_text(tokenizer, ids, labels) == ["\n" + answer]  # nothing follows: no end-of-turn token
