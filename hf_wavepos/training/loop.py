"""The one training loop every recipe runs (pretraining, continued pretraining, LoRA), on Accelerate.

    result = train(load_config("recipes/configs/tiny_cpu.yaml", ["train.max_steps=20"]))

What it does, in order:

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

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from hf_wavepos.data.packing import IGNORE_INDEX, collate_blocks
from hf_wavepos.training import checkpoint as ckpt
from hf_wavepos.training.batches import BatchPlan
from hf_wavepos.training.config import TrainConfig
from hf_wavepos.training.distill import build_distiller
from hf_wavepos.training.inputs import load_documents, load_run_tokenizer, prepare_batches
from hf_wavepos.training.lora import lora_config, merge_adapter, wrap_lora
from hf_wavepos.training.modeling import check_model_inputs, instantiate_model, model_config, resolve_position
from hf_wavepos.training.schedule import lr_lambda

CONFIG_FILE = "train_config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"

# Settings that decide which data a step sees and which network it trains: a resumed run must
# keep them (the budget, logging, evaluation and checkpoint settings may change).
RESUME_FIXED = ("model", "data", "lora", "distill", "train.seed", "train.global_batch_size", "optim", "schedule")


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


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the labelled tokens.

    Args:
        logits: (B, L, V) model outputs.
        labels: (B, L) unshifted labels; position i's logits predict labels[i + 1]; `IGNORE_INDEX`
            entries (document starts) are skipped.

    Returns:
        Scalar float32 sum (divide by `count_targets` of the whole global batch for the mean).
    """
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def count_targets(labels: torch.Tensor) -> int:
    """Number of tokens `token_loss_sum` adds up for ``labels`` (B, L)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def _check_resume_config(config: TrainConfig, output_dir: Path) -> None:
    saved_path = output_dir / CONFIG_FILE
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text())
    now = config.to_dict()
    changed = []
    for key in RESUME_FIXED:
        section, _, name = key.partition(".")
        old = saved.get(section, {})
        new = now.get(section, {})
        if name:
            old, new = old.get(name), new.get(name)
        if old != new:
            changed.append(key)
    if changed:
        raise ValueError(
            f"cannot resume in {output_dir}: {', '.join(changed)} differ from the run's {CONFIG_FILE}; a resumed "
            "run must keep the model, data, batch and optimiser settings (only the budget, logging, evaluation "
            "and checkpoint settings may change). Use a new output_dir for a new run."
        )


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _write_metrics(output_dir: Path, record: dict[str, Any]) -> None:
    with open(output_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


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
    """Run one experiment end to end (see the module docstring).

    Args:
        config: the validated experiment (`hf_wavepos.training.load_config`).
        resume_from_checkpoint: None, ``"latest"`` or a checkpoint folder.

    Returns:
        `TrainResult` (on every process; paths are written by the main process).
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import ProjectConfiguration, set_seed

    output_dir = Path(config.output_dir)
    # ---- 1. every input check, before any compute
    position = resolve_position(config.model.position, config.data.block_size)
    cpu = not _has_accelerator()  # several processes on a CPU-only machine: gloo (MULTI_CPU)
    if cpu:
        _refuse_sharding_without_gpu()
    state = PartialState(cpu=cpu)
    plan = BatchPlan(config.train.global_batch_size, config.train.per_device_batch_size,
                     state.num_processes, state.process_index)
    resume = ckpt.resolve_resume(resume_from_checkpoint, output_dir)
    if resume is not None:
        _check_resume_config(config, output_dir)
    elif ckpt.list_checkpoints(output_dir):
        raise ValueError(
            f"{output_dir} already holds checkpoints of a run; pass --resume_from_checkpoint latest to continue it, "
            "or choose another output_dir."
        )
    splits = load_documents(config)
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if resume is None:
            (output_dir / CONFIG_FILE).write_text(config.to_yaml())
            (output_dir / METRICS_FILE).unlink(missing_ok=True)
    state.wait_for_everyone()
    tokenizer = load_run_tokenizer(config, splits, state)
    hf_config = model_config(config.model, tokenizer, config.data.block_size)
    check_model_inputs(hf_config, tokenizer, config.data.block_size, position)
    if config.lora.enabled:  # validates targets and trainable extras against the architecture
        lora_config(config.lora, hf_config.model_type, tied_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)))

    # ---- 2. data
    set_seed(config.train.seed)
    batches = prepare_batches(config, splits, tokenizer, plan, state)
    block_tokens = config.train.global_batch_size * config.data.block_size
    max_steps = config.train.max_steps or math.ceil(config.train.max_tokens / block_tokens)

    # ---- 3. model, optimiser, schedule
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=config.train.mixed_precision,
        gradient_accumulation_steps=plan.accumulation_steps,
        log_with=list(config.log.trackers) or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        step_scheduler_with_optimizer=False,
    )
    if accelerator.gradient_accumulation_steps != plan.accumulation_steps:
        raise ValueError(
            f"the launch configuration sets gradient accumulation to {accelerator.gradient_accumulation_steps}, but "
            f"hf_wavepos derives it from train.global_batch_size: {plan.accumulation_steps}. Remove "
            "gradient_accumulation_steps from the accelerate launch config / environment."
        )
    deepspeed = accelerator.state.deepspeed_plugin
    if deepspeed is not None:  # no prepared dataloader: tell DeepSpeed the micro-batch and clipping
        deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = plan.per_device_batch_size
        deepspeed.deepspeed_config["gradient_accumulation_steps"] = plan.accumulation_steps
        if config.optim.max_grad_norm is not None:
            deepspeed.deepspeed_config["gradient_clipping"] = config.optim.max_grad_norm
    model = instantiate_model(config.model, hf_config, position, seed=config.train.seed)
    distiller = build_distiller(config, accelerator.device, hf_config.vocab_size)  # None unless distill.enabled
    model_type = type(model.config).model_type  # after conversion, e.g. wavepos_llama
    model.config.use_cache = False
    if config.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora.enabled:
        model = wrap_lora(model, config.lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    o = config.optim
    optimizer = torch.optim.AdamW(_param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.schedule, max_steps))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if config.lora.enabled:
        _checkpoint_trainable_only(accelerator, model)

    start_step = 0
    if resume is not None:
        saved = ckpt.load_checkpoint(accelerator, resume) if not config.lora.enabled else _load_lora_checkpoint(
            accelerator, model, resume
        )
        start_step = int(saved["step"])
        accelerator.print(f"resumed from {resume} at step {start_step}", flush=True)
    accelerator.init_trackers(config.log.run_name, config=config.flat())
    accelerator.print(
        f"model {model_type}: {total / 1e6:.2f}M parameters, {trainable / 1e6:.3f}M trained; "
        f"{batches.num_train_blocks or 'streamed'} training blocks of {config.data.block_size}; "
        f"{plan.num_processes} process(es) x {plan.per_device_batch_size} blocks x {plan.accumulation_steps} "
        f"accumulation = {config.train.global_batch_size} per step; {max_steps} steps; {splits.description}",
        flush=True,
    )

    # ---- 4. train
    progress = tqdm(total=max_steps, initial=start_step, desc="train", disable=not accelerator.is_local_main_process)
    scale_base = plan.num_processes * plan.accumulation_steps
    timer_start, timed_tokens = None, 0
    train_loss = val_loss = None
    if config.eval.at_start and start_step == 0:  # step 0: e.g. right after a position conversion
        val_loss = evaluate(model, batches.validation, accelerator, plan.per_device_batch_size)
        accelerator.log({"eval/loss": val_loss}, step=0)
        if accelerator.is_main_process:
            _write_metrics(output_dir, {"step": 0, "val_loss": val_loss})
    last_saved = start_step if resume is not None else -1
    for step in range(start_step, max_steps):
        micro = [{k: v.to(accelerator.device) for k, v in mb.items()} for mb in batches.train.micro_batches(step)]
        local_targets = torch.tensor(float(sum(count_targets(mb["labels"]) for mb in micro)), device=accelerator.device)
        global_targets = accelerator.reduce(local_targets, "sum")
        loss_sum = torch.zeros((), device=accelerator.device)
        grad_norm, lr = None, scheduler.get_last_lr()[0]
        for mb in micro:
            with accelerator.accumulate(model):
                logits = model(input_ids=mb["input_ids"], position_ids=mb["position_ids"]).logits
                summed = token_loss_sum(logits, mb["labels"])
                if distiller is not None:  # weight x KL to the teacher + (1 - weight) x next-token loss
                    summed = distiller.loss_sum(summed, logits, mb)
                # accelerate divides by the accumulation steps and DDP averages over processes:
                # the gradient becomes sum over the global batch / number of its targets.
                accelerator.backward(summed * (scale_base / global_targets))
                loss_sum += summed.detach()
                if accelerator.sync_gradients:
                    if o.max_grad_norm is not None:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), o.max_grad_norm)
                    optimizer.step()
                    if not accelerator.optimizer_step_was_skipped:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
        train_loss = float(accelerator.reduce(loss_sum, "sum") / global_targets)
        done = step + 1
        if timer_start is None:  # the first step pays for warm-up; time from its end
            timer_start = time.perf_counter()
        else:
            timed_tokens += block_tokens
        progress.update(1)
        progress.set_postfix(loss=f"{train_loss:.4f}")
        if done % config.log.every_steps == 0 or done == max_steps or done == start_step + 1:
            elapsed = time.perf_counter() - timer_start
            record = {
                "step": done, "loss": train_loss, "lr": lr,
                "tokens": done * block_tokens,
            }
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            if timed_tokens and elapsed > 0:
                record["tokens_per_second"] = timed_tokens / elapsed
            accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=done)
            if accelerator.is_main_process:
                _write_metrics(output_dir, record)
        if config.eval.every_steps and done % config.eval.every_steps == 0 and done != max_steps:
            val_loss = evaluate(model, batches.validation, accelerator, plan.per_device_batch_size)
            accelerator.log({"eval/loss": val_loss}, step=done)
            if accelerator.is_main_process:
                _write_metrics(output_dir, {"step": done, "val_loss": val_loss})
        if config.checkpoint.every_steps and done % config.checkpoint.every_steps == 0 and done != max_steps:
            _save(accelerator, config, done, train_loss)
            last_saved = done
    progress.close()
    elapsed = time.perf_counter() - timer_start if timer_start is not None else 0.0

    # ---- 5. final evaluation, checkpoint and model
    val_loss = evaluate(model, batches.validation, accelerator, plan.per_device_batch_size)
    accelerator.log({"eval/loss": val_loss}, step=max_steps)
    if accelerator.is_main_process:
        _write_metrics(output_dir, {"step": max_steps, "val_loss": val_loss})
    if last_saved != max_steps:
        _save(accelerator, config, max_steps, train_loss)
    final_model, adapter = _save_final(accelerator, model, tokenizer, config)
    tokens_per_second = timed_tokens / elapsed if timed_tokens and elapsed > 0 else None
    summary = {
        "steps": max_steps, "train_loss": train_loss, "val_loss": val_loss,
        "tokens_per_second": tokens_per_second, "processes": plan.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "global_batch_size": config.train.global_batch_size, "block_size": config.data.block_size,
        "accumulation_steps": plan.accumulation_steps, "parameters": total, "trainable_parameters": trainable,
        "mixed_precision": config.train.mixed_precision, "device": _device_name(accelerator.device),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "final_model": final_model, "adapter": adapter,
    }
    if accelerator.is_main_process:
        ckpt.write_json_atomic(output_dir / SUMMARY_FILE, summary)
    accelerator.end_training()
    return TrainResult(str(output_dir), max_steps, train_loss, val_loss, tokens_per_second, final_model, adapter, summary)


def _refuse_sharding_without_gpu() -> None:
    """Accelerate runs FSDP and DeepSpeed only on GPUs; on a CPU-only machine it would silently train
    plain data-parallel instead, with none of the sharding the launch config asked for."""
    from accelerate.utils import parse_flag_from_env

    for flag, backend in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if parse_flag_from_env(flag):
            raise ValueError(
                f"the launch config asks for {backend} ({flag}=true), but this machine has no GPU and Accelerate "
                f"runs {backend} only on GPUs (it would fall back to unsharded data parallel). On a CPU use "
                "recipes/accelerate/cpu_2proc.yaml, or launch on a GPU machine."
            )


def _has_accelerator() -> bool:
    accel = getattr(torch, "accelerator", None)
    if accel is not None and hasattr(accel, "is_available"):
        return bool(accel.is_available())
    return torch.cuda.is_available()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{device.type} ({platform.processor() or platform.machine()})"


def _save(accelerator: Any, config: TrainConfig, step: int, train_loss: float | None) -> None:
    tokens = step * config.train.global_batch_size * config.data.block_size
    path = ckpt.save_checkpoint(
        accelerator, config.output_dir, step, {"step": step, "tokens": tokens, "train_loss": train_loss},
        config.checkpoint.keep_last,
    )
    accelerator.print(f"checkpoint saved: step {step} -> {path}", flush=True)


def _checkpoint_trainable_only(accelerator: Any, model: Any) -> None:
    # With LoRA the frozen base is rebuilt from model.pretrained on resume; checkpoints keep only
    # the trained tensors (adapters, trained embeddings / norms) instead of the whole model.
    names = {name for name, p in model.named_parameters() if p.requires_grad}

    def keep_trained(models: list, weights: list, output_dir: str) -> None:
        for i, state_dict in enumerate(weights):
            weights[i] = {k: v for k, v in state_dict.items() if k in names}

    accelerator.register_save_state_pre_hook(keep_trained)


def _load_lora_checkpoint(accelerator: Any, model: Any, checkpoint: Path) -> dict[str, Any]:
    from accelerate.utils import DistributedType
    from safetensors import safe_open

    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        return ckpt.load_checkpoint(accelerator, checkpoint)  # their checkpoints hold the whole model
    weights = Path(checkpoint) / "model.safetensors"
    if weights.is_file():  # saved by _checkpoint_trainable_only: only the trained tensors
        with safe_open(str(weights), "pt") as handle:
            stored = set(handle.keys())
        missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in stored)
        if missing:
            raise ValueError(f"checkpoint {checkpoint} lacks trained tensors {missing[:5]}: it is not from this run.")
    accelerator.load_state(str(checkpoint), strict=False)
    return ckpt.read_state(checkpoint)


def _save_final(accelerator: Any, model: Any, tokenizer: Any, config: TrainConfig) -> tuple[str | None, str | None]:
    output_dir = Path(config.output_dir)
    state_dict = accelerator.get_state_dict(model)  # collective under FSDP / ZeRO-3
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.config.use_cache = True  # saved for inference; training ran without a cache
    final_model = adapter = None
    if accelerator.is_main_process:
        if config.lora.enabled:
            adapter_dir = output_dir / "adapter"
            unwrapped.save_pretrained(str(adapter_dir), state_dict=state_dict)
            tokenizer.save_pretrained(str(adapter_dir))
            adapter = str(adapter_dir)
            if config.lora.save_merged:
                merged_dir = output_dir / "merged"
                merged = merge_lora_from_config(config, adapter_dir)
                merged.save_pretrained(str(merged_dir))
                tokenizer.save_pretrained(str(merged_dir))
                final_model = str(merged_dir)
        else:
            final_dir = output_dir / "final"
            unwrapped.save_pretrained(str(final_dir), state_dict=state_dict)
            tokenizer.save_pretrained(str(final_dir))
            final_model = str(final_dir)
        for folder in (final_model, adapter):
            if folder is not None:
                (Path(folder) / CONFIG_FILE).write_text(config.to_yaml())
        accelerator.print(f"saved {final_model or ''} {adapter or ''}".strip(), flush=True)
    accelerator.wait_for_everyone()
    return final_model, adapter


def merge_lora_from_config(config: TrainConfig, adapter_dir: str | Path) -> torch.nn.Module:
    """Rebuild a run's base model on the CPU (same checkpoint, same position conversion) and merge its adapter.

    Args:
        config: the LoRA run's experiment.
        adapter_dir: the adapter folder the run saved.

    Returns:
        The merged transformers model (float32 unless ``model.dtype`` says otherwise).
    """
    from hf_wavepos.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(Path(config.output_dir) / "tokenizer"))
    position = resolve_position(config.model.position, config.data.block_size)
    hf_config = model_config(config.model, tokenizer, config.data.block_size)
    base = instantiate_model(config.model, hf_config, position, seed=config.train.seed)
    merged = merge_adapter(base, adapter_dir)
    merged.config.use_cache = True
    return merged.eval()
