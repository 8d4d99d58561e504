"""The preprocess chain: the steps a config asks for, in flow order, built once with what they need.

    adapt → content → choose_trained → render → tokenize → mask | trl_completion_only | glm4
          → [append_eos] → [drop_oldest_turns] → truncate → injected_text → split

Any engine runs it the same way: build a `Toolkit` and the chain once per process, then call the chain on batches
of `(record, format)` pairs from `pipeline.stages.ingest.read_records` (or, for a config of `sources`, of
`(Drawn, format)` pairs from `pipeline.stages.mixture.Mixture.records`); the rows it passes on are the samples to
write, each with its split.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pipeline.encoders.choose import make_encoder
from pipeline.stages.adapt import Adapt
from pipeline.stages.content import ContentCheck
from pipeline.stages.injected import InjectedText, NoteInjectedText, template_tokens
from pipeline.stages.mask import AppendEos, ChooseTrained, Label, Mask
from pipeline.stages.mixture import DrawnAdapt
from pipeline.stages.presets import Glm4Preset, TrlCompletionMask
from pipeline.stages.render import Render, Renderer, renderer_args, template_name
from pipeline.stages.render_limits import RenderLimits
from pipeline.stages.split import Split
from pipeline.stages.tokenize import Encoder, Tokenize
from pipeline.stages.truncate import DropOldestTurns, Truncate
from pipeline.step import Chain, Step
from pipeline.tokenizer import chat_template_of, load_tokenizer, special_token_ids
from schemas.config import PreprocessConfig


@dataclass(frozen=True)
class Toolkit:
    """What the steps are built with, loaded once per process: the tokenizer, its chat template, the proven
    encoder (and why it was chosen), the renderer and what finds the text its template injects. The manifest
    records them too."""

    tokenizer: Any
    template: str
    encode: Encoder
    encoder_reason: str
    renderer: Renderer
    injected: InjectedText

    @classmethod
    def load(cls, config: PreprocessConfig) -> "Toolkit":
        tokenizer = load_tokenizer(config.render)
        template = chat_template_of(tokenizer, config.render)
        threads = max(1, (os.cpu_count() or 1) // config.output.workers)  # workers share the cores
        encode, reason = make_encoder(tokenizer, config.render.encoder, threads)
        renderer = Renderer(template, **renderer_args(tokenizer), limits=RenderLimits.of(config.render))
        injected = InjectedText(renderer, template_tokens(tokenizer, template))
        return cls(tokenizer, template, encode, reason, renderer, injected)


def build_chain(config: PreprocessConfig, toolkit: Toolkit) -> Chain:
    """The steps `config` asks for, in order."""
    mask, truncation = config.mask, config.truncation
    choose = ChooseTrained(mask)
    steps: list[Step] = [
        DrawnAdapt(config.sources) if config.sources else Adapt(config.source),
        ContentCheck(toolkit.tokenizer, toolkit.template,
                     allow_special_tokens=config.render.allow_special_tokens_in_content),
        choose,
        Render(toolkit.renderer, template_name=template_name(config.render)),
        Tokenize(toolkit.encode),
    ]
    limit = truncation.limit(mask.preset)
    if mask.preset == "glm4":
        steps.append(Glm4Preset(toolkit.renderer, toolkit.tokenizer, toolkit.encode))
    else:
        label: Label = (TrlCompletionMask(mask, toolkit.tokenizer) if mask.preset == "trl_completion_only"
                        else Mask(mask, special_ids=frozenset(special_token_ids(toolkit.tokenizer).tolist())))
        steps.append(label)
        if mask.append_eos and toolkit.tokenizer.eos_token_id is not None:
            steps.append(AppendEos(toolkit.tokenizer.eos_token_id))
        if truncation.strategy == "drop_oldest_turns" and limit:
            steps.append(DropOldestTurns(choose=choose, renderer=toolkit.renderer, encode=toolkit.encode,
                                         label=label, limit=limit))
    steps += [Truncate(limit=limit, strategy=truncation.strategy),
              NoteInjectedText(toolkit.injected),
              Split(eval_fraction=config.output.eval_split, seed=config.output.seed)]
    return Chain(steps)
