"""Presets against independent references written here from the reference tools' published behaviour."""
from __future__ import annotations

import copy
import json

import datasets
import pytest

from pipeline.run import preprocess
from schemas.config import load_config
from tests.conftest import shared_path

GLM_TOOL = {
    "type": "function",
    "function": {
        "name": "get_recommended_books",
        "description": "Get recommended books based on interests",
        "parameters": {
            "type": "object",
            "properties": {"interests": {"type": "array", "items": {"type": "string"}}, "unused": None},
            "required": ["interests"],
        },
    },
}
GLM_ROWS = [
    {"messages": [
        {"role": "system", "content": "", "tools": [GLM_TOOL]},
        {"role": "user", "content": "I like history and science fiction. Any books?"},
        {"role": "assistant", "content": '{"name": "get_recommended_books", "arguments": {"interests": ["history", "science fiction"]}}'},
        {"role": "observation", "content": '{"books": ["Sapiens", "Dune"]}'},
        {"role": "assistant", "content": "Try Sapiens for history and Dune for science fiction."},
        {"role": "user", "content": "谢谢！还有别的吗？"},
        {"role": "assistant", "content": "也可以读《三体》。"},
    ]},
    {"messages": [
        {"role": "system", "content": "你是一个乐于助人的助手。"},
        {"role": "user", "content": "类型#裤*材质#牛仔布*风格#性感"},
        {"role": "assistant", "content": "这款牛仔裤采用浅白色面料，穿着舒适，尽显腿部线条。"},
    ]},
    {"messages": [
        {"role": "user", "content": "Write a haiku about the sea."},
        {"role": "assistant", "content": "Grey waves fold and break\nsalt wind carries gull voices\nthe tide keeps its time"},
    ]},
]


def glm4_process_batch_reference(batch_messages, tokenizer, max_input_length, max_output_length):
    """GLM-4 finetune.py process_batch, as published: per-message rendering, shifted mask, eos, cut."""
    def process_message(message):
        if "tools" in message and message["role"] == "system":
            for tool in message["tools"]:
                parameters = tool["function"]["parameters"]["properties"]
                tool["function"]["parameters"]["properties"] = {k: v for k, v in parameters.items() if v is not None}
        elif "tools" in message:
            del message["tools"]
        return message

    out_ids, out_labels = [], []
    for conv in batch_messages:
        input_ids, loss_masks = [151331, 151333], [False, False]
        for message in conv:
            message = process_message(copy.deepcopy(message))
            loss_mask_val = message["role"] not in ("system", "user", "observation")
            new_input_ids = tokenizer.apply_chat_template([message], tokenize=True, return_dict=False)[2:]
            input_ids += new_input_ids
            loss_masks += [loss_mask_val] * len(new_input_ids)
        input_ids.append(tokenizer.eos_token_id)
        loss_masks = [False, *loss_masks]
        labels = [i if m else -100 for i, m in zip(input_ids, loss_masks)]
        max_length = max_input_length + max_output_length + 1
        out_ids.append(input_ids[:max_length])
        out_labels.append(labels[:max_length])
    return out_ids, out_labels


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _run(tmp_path, inputs, **overrides):
    config = load_config(None, {"inputs": [str(p) for p in inputs], **overrides})
    out = tmp_path / "out"
    manifest = preprocess(config, out)
    return manifest, datasets.load_from_disk(str(out))["train"]


@pytest.mark.parametrize("limits", [(1024, 1024), (20, 10)])
def test_glm4_preset_equals_glm4_process_batch(tmp_path, limits):
    tokenizer_dir = shared_path("tokenizers", "glm4")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    path = _write_jsonl(tmp_path / "glm.jsonl", GLM_ROWS)
    manifest, train = _run(tmp_path, [path], **{
        "render.tokenizer": str(tokenizer_dir), "mask.preset": "glm4",
        "truncation.max_input_length": limits[0], "truncation.max_output_length": limits[1]})
    ids, labels = glm4_process_batch_reference([r["messages"] for r in GLM_ROWS], tokenizer, *limits)
    # GLM-4 keeps samples the cut left with no trained token (a zero-token loss); we drop and count them.
    kept = [k for k, row in enumerate(labels) if any(label != -100 for label in row)]
    assert train["input_ids"] == [ids[k] for k in kept]
    assert train["labels"] == [labels[k] for k in kept]
    accounting = manifest["accounting"]
    assert accounting["written"] == len(kept)
    assert accounting["filtered_reasons"].get("no_trained_tokens_after_truncation", 0) == len(GLM_ROWS) - len(kept)


def completion_only_reference(input_ids, response_ids, instruction_ids, pad_id):
    """TRL's DataCollatorForCompletionOnlyLM.torch_call on one example, loop for loop."""
    labels = [(-100 if t == pad_id else t) for t in input_ids]
    def starts(pattern):
        return [i for i in range(len(labels)) if labels[i] == pattern[0] and labels[i:i + len(pattern)] == pattern]
    if instruction_ids is None:
        found = starts(response_ids)
        if not found:
            return [-100] * len(labels)
        end = found[-1] + len(response_ids)
        return [-100] * end + labels[end:]
    response_idxs = [i + len(response_ids) for i in starts(response_ids)]
    human_idxs = starts(instruction_ids)
    if not response_idxs or not human_idxs:
        labels = [-100] * len(labels)
    if human_idxs and response_idxs and human_idxs[0] > response_idxs[0]:
        human_idxs = [0] + human_idxs
    for idx, (start, end) in enumerate(zip(human_idxs, response_idxs)):
        for k in range(start if idx != 0 else 0, end):
            labels[k] = -100
    if len(response_idxs) < len(human_idxs):
        for k in range(human_idxs[-1], len(labels)):
            labels[k] = -100
    return labels


@pytest.mark.parametrize("instruction", [None, "<|im_start|>user\n"])
def test_trl_completion_only_preset_equals_the_collator(tmp_path, instruction):
    tokenizer_dir = shared_path("tokenizers", "qwen2.5")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rows = [{"messages": [m if m["role"] != "observation" else {**m, "role": "tool"} for m in r["messages"]
                          if "tools" not in m]} for r in GLM_ROWS]
    path = _write_jsonl(tmp_path / "chat.jsonl", rows)
    overrides = {"render.tokenizer": str(tokenizer_dir), "mask.preset": "trl_completion_only",
                 "mask.response_template": "<|im_start|>assistant\n"}
    if instruction:
        overrides["mask.instruction_template"] = instruction
    _, train = _run(tmp_path, [path], **overrides)
    response_ids = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    instruction_ids = tokenizer.encode(instruction, add_special_tokens=False) if instruction else None
    for ids, labels in zip(train["input_ids"], train["labels"]):
        assert labels == completion_only_reference(ids, response_ids, instruction_ids, tokenizer.pad_token_id)
    assert any(l != -100 for labels in train["labels"] for l in labels)


def rasbt_reference(entries, tokenizer, allowed_max_length):
    """LLMs-from-scratch ch. 7: format_input + response, encoded; custom_collate_fn's targets per entry."""
    targets = []
    for entry in entries:
        text = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
                f"request.\n\n### Instruction:\n{entry['instruction']}")
        text += f"\n\n### Input:\n{entry['input']}" if entry["input"] else ""
        text += f"\n\n### Response:\n{entry['output']}"
        item = tokenizer.encode(text) + [50256]
        padded = item + [50256] * 3
        target = padded[1:]
        pads = [i for i, t in enumerate(target) if t == 50256]
        for i in pads[1:]:
            target[i] = -100
        targets.append(target[:allowed_max_length])
    return targets


def test_rasbt_preset_shifted_labels_equal_the_book_targets(tmp_path):
    tokenizer_dir = shared_path("tokenizers", "gpt2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    entries = [
        {"instruction": "Convert to passive voice.", "input": "The chef cooks the meal.", "output": "The meal is cooked by the chef."},
        {"instruction": "Name a primary colour.", "input": "", "output": "Red."},
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    allowed = 40
    _, train = _run(tmp_path, [path], **{"render.tokenizer": str(tokenizer_dir), "mask.preset": "rasbt",
                                          "truncation.max_length": allowed + 1})
    for labels, target in zip(train["labels"], rasbt_reference(entries, tokenizer, allowed)):
        padded = labels[1:] + [-100] * (len(target) - len(labels[1:]))  # the trainer pads labels with -100
        assert padded[: len(target)] == target
