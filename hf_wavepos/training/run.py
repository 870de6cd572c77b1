"""A run before its steps: the checks of `prepare_run` (phase 1) and the objects of `build_run`.

`prepare_run` validates everything that can be wrong with the inputs before any compute and
starts ``output_dir``; `build_run` packs the data and builds Accelerate, the model (scratch or
pretrained, converted, LoRA), the optimiser and the schedule, and loads the resume checkpoint.
The steps (`hf_wavepos.training.loop`) then use the returned `Run`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_wavepos.training import checkpoint as ckpt
from hf_wavepos.training.batches import BatchPlan
from hf_wavepos.training.distill import build_distiller
from hf_wavepos.training.experiment_config import TrainConfig
from hf_wavepos.training.run_inputs import RunBatches, load_documents, load_run_tokenizer, prepare_batches
from hf_wavepos.training.launch import has_accelerator, make_accelerator, refuse_sharding_without_gpu
from hf_wavepos.training.lora import lora_config, wrap_lora
from hf_wavepos.training.modeling import check_model_inputs, instantiate_model, model_config, resolve_position
from hf_wavepos.training.outputs import (
    CONFIG_FILE,
    METRICS_FILE,
    check_resume_config,
    checkpoint_trainable_only,
    load_lora_checkpoint,
)
from hf_wavepos.training.schedule import lr_lambda


@dataclass
class Prepared:
    """A checked run, before any compute: what `prepare_run` found and decided."""

    config: TrainConfig
    output_dir: Path
    position: Any  # a preset name or WavePosConfig (`resolve_position`)
    cpu: bool  # no accelerator on this machine: Accelerate on CPU (gloo for several processes)
    state: Any  # accelerate.PartialState
    plan: BatchPlan
    resume: Path | None  # the checkpoint to resume from
    splits: Any  # TextSplits
    tokenizer: Any
    hf_config: Any  # the transformers config of the model to build


def prepare_run(config: TrainConfig, resume_from_checkpoint: str | None = None) -> Prepared:
    """Phase 1: every input check before any packing or training; starts ``output_dir``.

    Checks the position method, the machine against the launch, the batch split, the resume
    point (and that its settings did not change), the data, the tokenizer/model fit and the
    LoRA targets. Writes ``train_config.yaml`` for a new run (clearing old metrics).

    Raises:
        ValueError: naming the setting and the fix, for any of those checks.
    """
    from accelerate import PartialState

    output_dir = Path(config.output_dir)
    position = resolve_position(config.model.position, config.data.block_size)
    cpu = not has_accelerator()
    if cpu:
        refuse_sharding_without_gpu()
    state = PartialState(cpu=cpu)
    plan = BatchPlan(config.train.global_batch_size, config.train.per_device_batch_size,
                     state.num_processes, state.process_index)
    resume = ckpt.resolve_resume(resume_from_checkpoint, output_dir)
    if resume is not None:
        check_resume_config(config, output_dir)
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
    return Prepared(config, output_dir, position, cpu, state, plan, resume, splits, tokenizer, hf_config)


class Throughput:
    """Training tokens per second, timed from the end of the first step (it pays for warm-up)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.tokens = 0

    def step_done(self, tokens: int) -> None:
        """Count one finished step of ``tokens`` tokens."""
        if self.start is None:
            self.start = time.perf_counter()
        else:
            self.tokens += tokens

    def elapsed(self) -> float:
        """Seconds since the end of the first step (0 before it)."""
        return time.perf_counter() - self.start if self.start is not None else 0.0

    def tokens_per_second(self) -> float | None:
        """Tokens of the timed steps per second, None before two steps."""
        elapsed = self.elapsed()
        return self.tokens / elapsed if self.tokens and elapsed > 0 else None


@dataclass
class Run:
    """A built run: what the steps use, and how far they got."""

    prepared: Prepared
    accelerator: Any
    model: Any  # prepared by Accelerate
    optimizer: Any
    scheduler: Any
    batches: RunBatches
    max_steps: int
    start_step: int
    parameters: int
    trainable_parameters: int
    throughput: Throughput = field(default_factory=Throughput)
    train_loss: float | None = None
    val_loss: float | None = None
    last_saved: int = -1  # the step of the newest checkpoint (-1: none)
    distiller: Any = None  # `hf_wavepos.training.distill` teacher, None unless distill.enabled

    @property
    def config(self) -> TrainConfig:
        return self.prepared.config

    @property
    def block_tokens(self) -> int:
        """Tokens of one optimiser step: global batch x block size."""
        return self.config.train.global_batch_size * self.config.data.block_size


def build_run(prepared: Prepared) -> Run:
    """Phases 2-3: packed data, Accelerate, model, optimiser and schedule; loads the resume checkpoint.

    Raises:
        ValueError: when the launch configuration sets its own gradient accumulation, or a LoRA
            checkpoint is not from this run.
    """
    config, plan = prepared.config, prepared.plan
    from accelerate.utils import set_seed

    set_seed(config.train.seed)
    batches = prepare_batches(config, prepared.splits, prepared.tokenizer, plan, prepared.state)
    block_tokens = config.train.global_batch_size * config.data.block_size
    max_steps = config.train.max_steps or math.ceil(config.train.max_tokens / block_tokens)
    accelerator = make_accelerator(config, plan, prepared.cpu)
    model = instantiate_model(config.model, prepared.hf_config, prepared.position, seed=config.train.seed)
    distiller = build_distiller(config, accelerator.device, prepared.hf_config.vocab_size, model)
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
        checkpoint_trainable_only(accelerator, model)
    run = Run(prepared, accelerator, model, optimizer, scheduler, batches, max_steps, 0, total, trainable)
    run.distiller = distiller
    if prepared.resume is not None:
        resume = prepared.resume
        saved = load_lora_checkpoint(accelerator, model, resume) if config.lora.enabled else ckpt.load_checkpoint(
            accelerator, resume
        )
        run.start_step = run.last_saved = int(saved["step"])
        accelerator.print(f"resumed from {resume} at step {run.start_step}", flush=True)
    accelerator.init_trackers(config.log.run_name, config=config.flat())
    _print_plan(run, model_type)
    return run


def _print_plan(run: Run, model_type: str) -> None:
    config, plan = run.config, run.prepared.plan
    run.accelerator.print(
        f"model {model_type}: {run.parameters / 1e6:.2f}M parameters, {run.trainable_parameters / 1e6:.3f}M trained; "
        f"{run.batches.num_train_blocks or 'streamed'} training blocks of {config.data.block_size}; "
        f"{plan.num_processes} process(es) x {plan.per_device_batch_size} blocks x {plan.accumulation_steps} "
        f"accumulation = {config.train.global_batch_size} per step; {run.max_steps} steps; "
        f"{run.prepared.splits.description}",
        flush=True,
    )


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.dim() >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
