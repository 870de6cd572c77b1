"""The one training loop every recipe runs (pretraining, continued pretraining, LoRA), on Accelerate.

    result = train(load_config("recipes/configs/tiny_cpu.yaml", ["train.max_steps=20"]))

`train` runs named phases, each a function that can be called (and tested) on its own:
`prepare_run` (1), `build_run` (2-3), `train_step` and `end_step` with its policy `step_actions`
(4-5), `finish_run` (6). In order:

1. checks everything that can be wrong with the inputs (config, position method, data columns,
   tokenizer/model fit, block size, batch split) before any packing or training;
2. tokenises and packs the data (document boundaries kept: per-document ``position_ids``,
   labels -100 at document starts);
3. builds the model (scratch or pretrained, converted to wavelet positions if asked, LoRA);
4. trains: each optimiser step sees ``global_batch_size`` blocks however many processes run
   (accumulation = global / (per-device x processes)); the loss is the mean over every
   predicted token of the global batch, so one process and N processes compute the same step;
5. logs (Accelerate trackers + ``metrics.jsonl``), evaluates on held-out blocks, saves atomic
   checkpoints (`hf_wavepos.training.checkpoint`), resumes exactly from one;
6. saves the final model with ``save_pretrained`` (LoRA: the adapter and the merged model) with
   its tokenizer, and ``train_summary.json``.

Outputs under ``output_dir``: ``train_config.yaml``, ``tokenizer/``, ``metrics.jsonl``,
``logs/`` (TensorBoard), ``checkpoints/checkpoint-<step>/``, ``final/`` or ``adapter/`` +
``merged/``, ``train_summary.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from hf_wavepos.data.packing import collate_blocks
from hf_wavepos.machine import device_name
from hf_wavepos.training import checkpoint as ckpt
from hf_wavepos.training.experiment_config import TrainConfig
from hf_wavepos.training.losses import count_targets, token_loss_sum
from hf_wavepos.training.outputs import SUMMARY_FILE, merge_lora_from_config, save_final, save_run_checkpoint, write_metrics
from hf_wavepos.training.run import Prepared, Run, build_run, prepare_run

__all__ = [
    "Prepared", "Run", "StepActions", "StepResult", "TrainResult", "build_run", "count_targets", "end_step",
    "evaluate", "finish_run", "merge_lora_from_config", "micro_batch_loss", "prepare_run", "step_actions", "token_loss_sum",
    "train", "train_step",
]


@dataclass
class TrainResult:
    """What a finished run reports (also written to ``train_summary.json``)."""

    output_dir: str
    steps: int
    train_loss: float | None
    val_loss: float | None
    tokens_per_second: float | None
    final_model: str | None
    adapter: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def evaluate(model: Any, blocks: Any, accelerator: Any, batch_size: int) -> float:
    """Mean next-token loss over held-out blocks, shared evenly among processes.

    Every process runs the same number of forward passes (sharded models need that); blocks
    beyond a multiple of the process count are left out.

    Args:
        model: the prepared model.
        blocks: packed blocks (a numpy-formatted `datasets.Dataset` or a list of block dicts).
        accelerator: the run's accelerator.
        batch_size: blocks per forward pass.
    """
    n = len(blocks) // accelerator.num_processes * accelerator.num_processes
    mine = list(range(accelerator.process_index, n, accelerator.num_processes))
    loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    count = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(mine), batch_size):
            chunk = mine[start:start + batch_size]
            rows = blocks[chunk] if not isinstance(blocks, list) else [blocks[i] for i in chunk]
            batch = collate_blocks(rows)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
            loss += token_loss_sum(logits, batch["labels"]).double()
            count += count_targets(batch["labels"])
    model.train(was_training)
    loss, count = accelerator.reduce(loss, "sum"), accelerator.reduce(count, "sum")
    return float(loss / count)


def train(config: TrainConfig, resume_from_checkpoint: str | None = None) -> TrainResult:
    """Run one experiment end to end: the phases of the module docstring, in order.

    Args:
        config: the validated experiment (`hf_wavepos.training.load_config`).
        resume_from_checkpoint: None, ``"latest"`` or a checkpoint folder.

    Returns:
        `TrainResult` (on every process; paths are written by the main process).

    Raises:
        ValueError: from `prepare_run` or `build_run`, before any training step.
    """
    run = build_run(prepare_run(config, resume_from_checkpoint))
    progress = tqdm(total=run.max_steps, initial=run.start_step, desc="train",
                    disable=not run.accelerator.is_local_main_process)
    if run.config.eval.at_start and run.start_step == 0:  # step 0: e.g. right after a position conversion
        _evaluate_and_log(run, 0)
    for step in range(run.start_step, run.max_steps):
        result = train_step(run, step)
        run.throughput.step_done(run.block_tokens)
        progress.update(1)
        progress.set_postfix(loss=f"{result.loss:.4f}")
        end_step(run, step + 1, result)
    progress.close()
    return finish_run(run)


# ------------------------------------------------------------------------------------- 4. step
@dataclass
class StepResult:
    """One optimiser step: mean loss over the global batch's targets, clipped norm, learning rate."""

    loss: float
    grad_norm: float | None
    lr: float


def train_step(run: Run, step: int) -> StepResult:
    """Phase 4: the optimiser step ``step`` (0-based) over this process' micro-batches.

    The loss is the mean over every predicted token of the global batch, so one process with
    accumulation and N processes without it compute the same step.
    """
    accelerator, model, optimizer = run.accelerator, run.model, run.optimizer
    plan, max_grad_norm = run.prepared.plan, run.config.optim.max_grad_norm
    micro = [{k: v.to(accelerator.device) for k, v in mb.items()} for mb in run.batches.train.micro_batches(step)]
    local_targets = torch.tensor(float(sum(count_targets(mb["labels"]) for mb in micro)), device=accelerator.device)
    global_targets = accelerator.reduce(local_targets, "sum")
    scale = plan.num_processes * plan.accumulation_steps / global_targets
    loss_sum = torch.zeros((), device=accelerator.device)
    grad_norm, lr = None, run.scheduler.get_last_lr()[0]
    for mb in micro:
        with accelerator.accumulate(model):
            summed = micro_batch_loss(run, model, mb)
            # accelerate divides by the accumulation steps and DDP averages over processes:
            # the gradient becomes sum over the global batch / number of its targets.
            accelerator.backward(summed * scale)
            loss_sum += summed.detach()
            if accelerator.sync_gradients:
                if max_grad_norm is not None:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                if not accelerator.optimizer_step_was_skipped:
                    run.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
    run.train_loss = float(accelerator.reduce(loss_sum, "sum") / global_targets)
    return StepResult(run.train_loss, None if grad_norm is None else float(grad_norm), lr)


def micro_batch_loss(run: Run, model: Any, mb: dict[str, torch.Tensor]) -> torch.Tensor:
    """The summed loss of one micro-batch: next-token loss, or the ``distill`` objective (logit
    distillation mixed with it, or attention transfer), each a sum over the micro-batch's targets."""
    if run.distiller is not None:
        return run.distiller.micro_batch_loss(model, mb, count_targets(mb["labels"]))
    logits = model(input_ids=mb["input_ids"], position_ids=mb["position_ids"]).logits
    return token_loss_sum(logits, mb["labels"])


# -------------------------------------------------------------------------------- 5. step end
@dataclass(frozen=True)
class StepActions:
    """What happens after a step: log it, evaluate, save a checkpoint."""

    log: bool
    evaluate: bool
    checkpoint: bool


def step_actions(config: TrainConfig, done: int, start_step: int, max_steps: int) -> StepActions:
    """The step-end policy after ``done`` steps of ``max_steps`` (a run that began at ``start_step``).

    Logs every ``log.every_steps``, the first step of a (resumed) run and the last one; evaluates
    and checkpoints every ``eval.every_steps`` / ``checkpoint.every_steps`` (None: never) except at
    the last step, which `finish_run` evaluates and saves.
    """
    every = config.log.every_steps
    eval_every, checkpoint_every = config.eval.every_steps, config.checkpoint.every_steps
    return StepActions(
        log=done % every == 0 or done == max_steps or done == start_step + 1,
        evaluate=bool(eval_every) and done % eval_every == 0 and done != max_steps,
        checkpoint=bool(checkpoint_every) and done % checkpoint_every == 0 and done != max_steps,
    )


def end_step(run: Run, done: int, result: StepResult) -> StepActions:
    """Phase 5: apply `step_actions` after ``done`` steps (trackers, ``metrics.jsonl``, checkpoints)."""
    actions = step_actions(run.config, done, run.start_step, run.max_steps)
    accelerator, output_dir = run.accelerator, run.prepared.output_dir
    if actions.log:
        record = {"step": done, "loss": result.loss, "lr": result.lr, "tokens": done * run.block_tokens}
        if result.grad_norm is not None:
            record["grad_norm"] = result.grad_norm
        if run.throughput.tokens_per_second() is not None:
            record["tokens_per_second"] = run.throughput.tokens_per_second()
        accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=done)
        if accelerator.is_main_process:
            write_metrics(output_dir, record)
    if actions.evaluate:
        _evaluate_and_log(run, done)
    if actions.checkpoint:
        save_run_checkpoint(accelerator, run.config, done, run.train_loss)
        run.last_saved = done
    return actions


def _evaluate_and_log(run: Run, step: int) -> None:
    run.val_loss = evaluate(run.model, run.batches.validation, run.accelerator, run.prepared.plan.per_device_batch_size)
    run.accelerator.log({"eval/loss": run.val_loss}, step=step)
    if run.accelerator.is_main_process:
        write_metrics(run.prepared.output_dir, {"step": step, "val_loss": run.val_loss})


# ----------------------------------------------------------------------------------- 6. finish
def finish_run(run: Run) -> TrainResult:
    """Phase 6: final evaluation, the last checkpoint, the saved model and ``train_summary.json``."""
    accelerator, config, plan = run.accelerator, run.config, run.prepared.plan
    tokens_per_second = run.throughput.tokens_per_second()
    _evaluate_and_log(run, run.max_steps)
    if hasattr(run.distiller, "close"):  # attention transfer: its hooks leave the model
        run.distiller.close()
    if run.last_saved != run.max_steps:
        save_run_checkpoint(accelerator, config, run.max_steps, run.train_loss)
    final_model, adapter = save_final(accelerator, run.model, run.prepared.tokenizer, config)
    summary = {
        "steps": run.max_steps, "train_loss": run.train_loss, "val_loss": run.val_loss,
        "tokens_per_second": tokens_per_second, "processes": plan.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "global_batch_size": config.train.global_batch_size, "block_size": config.data.block_size,
        "accumulation_steps": plan.accumulation_steps, "parameters": run.parameters,
        "trainable_parameters": run.trainable_parameters,
        "mixed_precision": config.train.mixed_precision, "device": device_name(accelerator.device),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "final_model": final_model, "adapter": adapter,
    }
    if accelerator.is_main_process:
        ckpt.write_json_atomic(run.prepared.output_dir / SUMMARY_FILE, summary)
    accelerator.end_training()
    return TrainResult(str(run.prepared.output_dir), run.max_steps, run.train_loss, run.val_loss, tokens_per_second,
                       final_model, adapter, summary)

