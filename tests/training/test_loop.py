"""The phases of `train`, each on its own: prepare, build, step, step-end policy, finish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hf_wavepos.training import (
    BatchPlan,
    build_run,
    end_step,
    finish_run,
    list_checkpoints,
    load_config,
    prepare_run,
    step_actions,
    train_step,
)
from hf_wavepos.training.launch import deepspeed_settings

TINY = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "tiny_cpu.yaml"
SMALL = ["log.trackers=[]", "data.max_documents=4", "data.validation_size=2", "eval.max_blocks=2"]


def test_step_actions_is_the_step_end_policy():
    config = load_config(TINY, ["log.every_steps=5", "eval.every_steps=4", "checkpoint.every_steps=6"])
    fresh = {done: step_actions(config, done, 0, 12) for done in range(1, 13)}
    assert [d for d, a in fresh.items() if a.log] == [1, 5, 10, 12]  # the first, every 5th, the last
    assert [d for d, a in fresh.items() if a.evaluate] == [4, 8]  # the last step: finish_run evaluates
    assert [d for d, a in fresh.items() if a.checkpoint] == [6]  # ... and saves
    resumed = [d for d in range(7, 13) if step_actions(config, d, 6, 12).log]
    assert resumed == [7, 10, 12]  # a resumed run logs its first step
    never = load_config(TINY, ["eval.every_steps=null", "checkpoint.every_steps=null"])
    assert not any(step_actions(never, d, 0, 30).evaluate or step_actions(never, d, 0, 30).checkpoint for d in range(1, 31))


def test_deepspeed_settings_follow_the_batch_plan():
    assert deepspeed_settings(BatchPlan(16, 2, 2, 0), 1.0) == {
        "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4, "gradient_clipping": 1.0,
    }
    assert "gradient_clipping" not in deepspeed_settings(BatchPlan(8, 8, 1, 0), None)


def test_prepare_run_checks_and_starts_the_output_dir_without_compute(tmp_path, fresh_accelerate):
    out = tmp_path / "run"
    prepared = prepare_run(load_config(TINY, [f"output_dir={out}", *SMALL]))
    assert prepared.plan.accumulation_steps == 2 and prepared.resume is None and prepared.cpu
    assert prepared.hf_config.vocab_size == len(prepared.tokenizer)
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer", "train_config.yaml"]  # no model, no logs
    with pytest.raises(ValueError, match="unknown wavepos preset 'oka2026'"):
        prepare_run(load_config(TINY, [f"output_dir={tmp_path / 'bad'}", "model.position=oka2026", *SMALL]))
    assert not (tmp_path / "bad").exists()


def test_one_step_with_accumulation_equals_one_big_batch_then_finish(tmp_path, fresh_accelerate):
    """build_run + train_step: 2 micro-batches of 4 and 1 of 8 take the same step; then end_step, finish_run."""
    runs, results = {}, {}
    for per_device in (4, 8):
        fresh_accelerate()
        config = load_config(TINY, [f"output_dir={tmp_path / str(per_device)}", f"train.per_device_batch_size={per_device}",
                                    "train.max_steps=1", *SMALL])
        runs[per_device] = build_run(prepare_run(config))
        results[per_device] = train_step(runs[per_device], 0)
    assert runs[4].prepared.plan.accumulation_steps == 2 and runs[8].prepared.plan.accumulation_steps == 1
    assert results[4].loss == pytest.approx(results[8].loss, rel=1e-5)
    assert results[4].grad_norm == pytest.approx(results[8].grad_norm, rel=1e-4) and results[4].lr == results[8].lr
    for (name, a), b in zip(runs[4].model.named_parameters(), runs[8].model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)

    run = runs[8]
    actions = end_step(run, 1, results[8])
    assert actions.log and not actions.evaluate and not actions.checkpoint  # the last step: finish_run's job
    (record,) = [json.loads(line) for line in (run.prepared.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 1 and record["loss"] == results[8].loss and record["tokens"] == 8 * 128
    result = finish_run(run)
    assert result.steps == 1 and result.train_loss == results[8].loss and result.val_loss > 0
    assert (Path(result.final_model) / "config.json").is_file()
    assert json.loads((run.prepared.output_dir / "train_summary.json").read_text())["accumulation_steps"] == 1
    assert [step for step, _ in list_checkpoints(run.prepared.output_dir)] == [1]
    fresh_accelerate()
    with pytest.raises(ValueError, match="already holds checkpoints"):
        prepare_run(run.config)
