"""Evaluation and early stopping: eval loss and token accuracy, the best checkpoint kept, `final/` from the best
step, the stop reason, and early-stopping state carried exactly through `--resume`."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.shards.format import IGNORE_INDEX
from pipeline.train.checkpoint import list_checkpoints, load_checkpoint
from pipeline.train.data import open_training_shards
from pipeline.train.early_stop import EvalTracker
from pipeline.train.loop import train
from pipeline.train.loss import token_eval_sums, token_loss_sum
from schemas.train_config import load_train_config
from tests.train.train_helpers import copy_run_until, write_shards

FAST = {"tiny_hidden": 32, "tiny_heads": 2, "batch_size": 4, "lr": 3e-3, "min_lr": 3e-4}
# Eval stops early on these: patience 2 at an eval every 2 steps, well before max_steps.
STOPPING = {"max_steps": 40, "eval_interval": 2, "early_stopping_patience": 2, "save_interval": 2,
            "keep_checkpoints": 1}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards") / "s", n_train=24, n_eval=4, tokenizer=True)


@pytest.fixture(scope="module")
def repeating(tmp_path_factory):
    """Every sample repeats one token: learnt in a few steps, so eval accuracy is well above zero."""
    return write_shards(tmp_path_factory.mktemp("repeating") / "s", n_train=24, n_eval=4, tokenizer=True,
                        train_stride=0, eval_stride=0)


@pytest.fixture(scope="module")
def rising(tmp_path_factory):
    """Train samples repeat one token, eval samples count up: eval loss rises as the model learns to repeat, so the
    best step comes early."""
    return write_shards(tmp_path_factory.mktemp("rising") / "s", n_train=24, n_eval=4, tokenizer=True,
                        train_stride=0, eval_stride=1)


def run(shards, out, **kw):
    torch.set_num_threads(1)
    return train(load_train_config(overrides={"data": str(shards), "out": str(out), **FAST, **kw}))


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def untimed(out):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records(out)]


def test_eval_sums_count_argmax_hits_at_trained_positions():
    logits = torch.full((1, 4, 5), -5.0)
    logits[0, 0, 2] = 5.0  # position 0 predicts 2: label 1 is 2, a hit
    logits[0, 1, 3] = 5.0  # position 1 predicts 3: label 2 is 4, a miss
    logits[0, 2, 1] = 5.0  # position 2 predicts 1: label 3 is untrained, not counted
    labels = torch.tensor([[IGNORE_INDEX, 2, 4, IGNORE_INDEX]])
    loss_sum, correct, trained = token_eval_sums(logits, labels)
    assert (correct.item(), trained.item()) == (1, 2)
    assert loss_sum.item() == pytest.approx(token_loss_sum(logits, labels).item())


def test_tracker_min_delta_and_patience():
    tracker = EvalTracker(patience=2, min_delta=0.1)
    assert tracker.update(10, 5.0)  # the first evaluation is the best so far
    assert tracker.update(20, 4.95) and tracker.best_step == 20  # a new best, but no improvement of more than 0.1
    assert tracker.evals_without_improvement == 1 and not tracker.should_stop
    assert not tracker.update(30, 4.99) and tracker.should_stop  # second evaluation without improvement
    restored = EvalTracker.restore(json.loads(json.dumps(tracker.state())), patience=3, min_delta=0.1)
    assert (restored.best_loss, restored.best_step, restored.last_eval_step) == (4.95, 20, 30)
    assert not restored.should_stop  # a larger patience (allowed on resume) continues
    assert restored.update(40, 4.80) and restored.evals_without_improvement == 0


def test_eval_accuracy_is_the_final_models_token_accuracy(repeating, tmp_path):
    out = tmp_path / "run"
    result = run(repeating, out, max_steps=4, eval_interval=4, final="last")
    last = records(out)[-1]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    split = open_training_shards(repeating).splits["eval"]
    hits = total = 0
    for i in range(len(split)):
        ids, labels = (torch.tensor(a, dtype=torch.long) for a in split.sample(i))
        with torch.no_grad():
            predicted = model(input_ids=ids[None]).logits[0, :-1].argmax(-1)
        trained = labels[1:] != IGNORE_INDEX
        hits += int((predicted[trained] == labels[1:][trained]).sum())
        total += int(trained.sum())
    assert hits > 0 and last["eval_accuracy"] == pytest.approx(hits / total)
    assert result.eval_accuracy == last["eval_accuracy"]
    assert f"eval accuracy {hits / total:.1%}" in result.summary()


def test_early_stopping_keeps_the_best_and_final_holds_it(rising, tmp_path):
    out = tmp_path / "run"
    result = run(rising, out, **STOPPING)
    evals = [(r["step"], r["eval_loss"]) for r in records(out) if "eval_loss" in r]
    best_step, best_loss = min(evals, key=lambda e: e[1])
    stop = evals[-1][0]
    assert result.steps == stop < 40 and [s for s, _ in evals].index(best_step) == len(evals) - 3  # patience 2
    assert best_step < stop  # the eval curve rose: the best is not the last step
    assert all("eval_accuracy" in r for r in records(out) if "eval_loss" in r)
    # the best checkpoint survives keep_checkpoints=1 beside the newest, and best.json names it
    assert [p.name for p in list_checkpoints(out)] == [f"step_{best_step:07d}.pt", f"step_{stop:07d}.pt"]
    assert json.loads((out / "checkpoints" / "best.json").read_text()) == {
        "step": best_step, "eval_loss": best_loss, "checkpoint": f"step_{best_step:07d}.pt"}
    from transformers import AutoModelForCausalLM

    final = AutoModelForCausalLM.from_pretrained(out / "final").state_dict()
    best = load_checkpoint(list_checkpoints(out)[0])["model"]
    last = load_checkpoint(list_checkpoints(out)[1])["model"]
    assert all(torch.equal(final[k], best[k]) for k in best)
    assert not all(torch.equal(final[k], last[k]) for k in last)
    summary = result.summary()
    assert f"stopped: early stopping at step {stop}, after 2 evaluations without improvement" in summary
    assert f"final, step {best_step}: the lowest eval loss, {best_loss:.4f} (final: best)" in summary


def test_final_last_and_stop_reasons(rising, tmp_path):
    result = run(rising, tmp_path / "last", **{**STOPPING, "final": "last"})
    assert result.final_step == result.steps and "final: last" in result.summary()
    result = run(rising, tmp_path / "steps", max_steps=4, eval_interval=2)
    assert "stopped: max_steps reached (4)" in result.summary() and result.final_step == 2
    no_eval = write_shards(tmp_path / "no_eval", n_train=8, n_eval=0)
    result = run(no_eval, tmp_path / "epochs", epochs=1)
    assert f"stopped: epochs done (1 epochs, {result.steps} steps)" in result.summary()
    assert f"final, step {result.steps}: the last step (no eval split to choose the best by)" in result.summary()


def test_early_stopping_survives_resume_exactly(rising, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run(rising, full, **{**STOPPING, "keep_checkpoints": 40})
    stop = records(full)[-1]["step"]
    resume_at = stop - 2  # after the first evaluation without improvement: the count must carry over
    copy_run_until(full, part, resume_at)
    result = run(rising, part, **{**STOPPING, "keep_checkpoints": 40}, resume=True)
    assert result.steps == stop and untimed(part) == untimed(full)
    assert (part / "checkpoints" / "best.json").read_text() == (full / "checkpoints" / "best.json").read_text()
    from safetensors.torch import load_file

    a, b = load_file(full / "final" / "model.safetensors"), load_file(part / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_needs_evaluations(shards, tmp_path):
    with pytest.raises(ConfigError, match="early_stopping_patience needs eval_interval > 0"):
        load_train_config(overrides={"data": "d", "out": "o", "early_stopping_patience": 3})
    with pytest.raises(ConfigError, match="early_stopping_min_delta set but early_stopping_patience is not"):
        load_train_config(overrides={"data": "d", "out": "o", "early_stopping_min_delta": 0.1})
    no_eval = write_shards(tmp_path / "no_eval", n_train=8, n_eval=0)
    with pytest.raises(ConfigError, match="early_stopping_patience needs an eval split, and .* has none"):
        run(no_eval, tmp_path / "run", max_steps=4, eval_interval=2, early_stopping_patience=1)
    assert not (tmp_path / "run").exists()
