"""Presets that reproduce a reference tool label for label, on top of the one rendering.

- `glm4`: GLM-4 `finetune.py` `process_batch`: `[gMASK]<sop>`, then each message rendered alone minus its first two
  tokens, system/user/observation masked and other roles trained, eos appended, the mask shifted right by one.
- `trl_completion_only`: TRL's `DataCollatorForCompletionOnlyLM`, from response (and instruction) template ids.
"""
from __future__ import annotations

import numpy as np

from pipeline.encoders.base import Encoded
from pipeline.errors import Reason, RowError
from pipeline.shards.format import IGNORE_INDEX
from pipeline.stages.mask import Label
from pipeline.stages.render import Renderer
from pipeline.stages.render_limits import render_timer
from pipeline.stages.row import Rendered, Row
from pipeline.stages.tokenize import Encoder
from pipeline.step import Step, Tally
from schemas.config import MaskConfig
from schemas.records import Conversation

GLM4_PREFIX = ("[gMASK]", "<sop>")
_GLM4_MASKED_ROLES = ("system", "user", "observation")


def glm4_messages(renderer: Renderer, conversation: Conversation) -> list[dict]:
    """The messages GLM-4 renders one by one, after its `process_message`: tools stay on the system message, and
    tool parameters whose schema is null are dropped from them."""
    messages, _ = renderer.template_messages(conversation, wrap=False)
    for message in messages:
        if message["role"] == "system" and "tools" in message:
            message["tools"] = [_without_null_properties(tool) for tool in message["tools"]]
    return messages


class Glm4Preset(Step):
    """The `glm4` preset step: each row's tokens and labels as GLM-4's `process_batch` builds them (`glm4_rows`),
    in place of the whole-conversation rendering the steps before made (kept only to compare with: a row whose
    per-message tokens differ is written as GLM-4 would, with a remark). A batch step: the per-message texts of the
    whole batch are encoded at once."""

    name = "glm4"

    def __init__(self, renderer: Renderer, tokenizer, encode: Encoder):
        self.renderer, self.tokenizer, self.encode = renderer, tokenizer, encode

    def process(self, items: list[Row], tally: Tally) -> list[Row]:
        passed = []
        with render_timer():
            rows = glm4_rows(self.renderer, self.tokenizer, self.encode, [row.conversation for row in items])
        for row, built in zip(items, rows):
            if isinstance(built, Exception):
                message = f"the chat template refused a message rendered alone (the glm4 preset's rendering): {built}"
                tally.drop(RowError.of(row.conversation, Reason.TEMPLATE_ERROR, "messages", message))
                continue
            row.input_ids, row.labels = built
            if not np.array_equal(row.input_ids[:-1], row.encoded.input_ids):
                tally.warn(RowError.of(
                    row.conversation,
                    Reason.GLM4_PER_MESSAGE_DIFFERS,
                    "messages",
                    "GLM-4's per-message tokens differ from the whole-conversation rendering; the glm4 preset "
                    "writes GLM-4's per-message tokens (the default preset writes the exact rendering)",
                ))
            passed.append(row)
        return passed


def _without_null_properties(tool: dict) -> dict:
    properties = tool.get("function", {}).get("parameters", {}).get("properties")
    if not isinstance(properties, dict):
        return tool
    function = tool["function"]
    parameters = {**function["parameters"], "properties": {k: v for k, v in properties.items() if v is not None}}
    return {**tool, "function": {**function, "parameters": parameters}}


def glm4_rows(
    renderer: Renderer, tokenizer, encode, conversations: list[Conversation]
) -> list[tuple[np.ndarray, np.ndarray] | Exception]:
    """(input_ids, labels) per conversation as GLM-4's per-message process_batch builds them, or the error of the
    template on one of its messages rendered alone (the row is rejected, not the run); `encode` is the run's
    encoder (texts -> Encoded)."""
    prefix = tokenizer.convert_tokens_to_ids(list(GLM4_PREFIX))
    per_conversation = [glm4_messages(renderer, c) for c in conversations]
    texts = [_render_each(renderer, messages) for messages in per_conversation]
    encoded = iter(encode([t for ts in texts if not isinstance(ts, Exception) for t in ts]))
    rows: list[tuple[np.ndarray, np.ndarray] | Exception] = []
    for messages, rendered in zip(per_conversation, texts):
        if isinstance(rendered, Exception):
            rows.append(rendered)
            continue
        ids, mask = list(prefix), [False, False]
        for message in messages:
            piece = next(encoded).input_ids[2:].tolist()
            ids += piece
            mask += [message["role"] not in _GLM4_MASKED_ROLES] * len(piece)
        ids.append(tokenizer.eos_token_id)
        shifted = np.array([False, *mask])
        ids_array = np.array(ids, dtype=np.int64)
        rows.append((ids_array, np.where(shifted, ids_array, IGNORE_INDEX).astype(np.int32)))
    return rows


def _render_each(renderer: Renderer, messages: list[dict]) -> list[str] | Exception:
    """Each message rendered alone, as GLM-4 does; instead, the error of the first one the template refuses (or that
    goes over a rendering limit)."""
    try:
        return [renderer.render_messages([m], None) for m in messages]
    except Exception as exc:  # noqa: BLE001 - a template error or a rendering limit, on this row's data
        return exc


class TrlCompletionMask(Label):
    """The `trl_completion_only` preset step: labels from the response (and instruction) template ids, as TRL's
    collator sets them on the tokens (`trl_completion_labels`)."""

    name = "trl_completion_only"

    def __init__(self, policy: MaskConfig, tokenizer):
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.response_ids = encode(policy.response_template) if policy.response_template else None
        self.instruction_ids = encode(policy.instruction_template) if policy.instruction_template else None
        self.pad_id = tokenizer.pad_token_id

    def labels(self, rendered: Rendered, encoded: Encoded, trained: frozenset[int]) -> np.ndarray:
        return trl_completion_labels(encoded.input_ids, response_ids=self.response_ids,
                                     instruction_ids=self.instruction_ids, pad_id=self.pad_id)


def trl_completion_labels(
    input_ids: np.ndarray, *, response_ids: list[int], instruction_ids: list[int] | None, pad_id: int | None
) -> np.ndarray:
    """Labels as TRL's completion-only collator sets them on one unpadded sequence.

    With only a response template, everything up to the end of its last occurrence is masked (only the last
    response trains). With an instruction template too, each instruction..response stretch is masked. Tokens equal
    to the pad id are masked as the collator's parent does."""
    labels = input_ids.astype(np.int32, copy=True)
    response_ends = [i + len(response_ids) for i in _occurrences(input_ids, response_ids)]
    if instruction_ids is None:
        if not response_ends:
            labels[:] = IGNORE_INDEX
        else:
            labels[: response_ends[-1]] = IGNORE_INDEX
    else:
        human_starts = _occurrences(input_ids, instruction_ids)
        if not response_ends or not human_starts:
            labels[:] = IGNORE_INDEX
        if human_starts and response_ends and human_starts[0] > response_ends[0]:
            human_starts = [0, *human_starts]
        for k, (start, end) in enumerate(zip(human_starts, response_ends)):
            labels[(start if k else 0) : end] = IGNORE_INDEX
        if human_starts and len(response_ends) < len(human_starts):
            labels[human_starts[-1] :] = IGNORE_INDEX
    if pad_id is not None:
        labels[input_ids == pad_id] = IGNORE_INDEX
    return labels


def _occurrences(ids: np.ndarray, pattern: list[int]) -> list[int]:
    """Start positions of `pattern` in `ids` (vectorised first-token match, then a full compare)."""
    if not pattern or len(ids) < len(pattern):
        return []
    candidates = np.flatnonzero(ids[: len(ids) - len(pattern) + 1] == pattern[0])
    target = np.asarray(pattern)
    return [int(i) for i in candidates if np.array_equal(ids[i : i + len(pattern)], target)]
