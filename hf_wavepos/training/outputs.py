"""What a run writes under ``output_dir`` and reads back: its config, metrics, checkpoints, models.

``train_config.yaml`` (the experiment, checked on resume), ``metrics.jsonl`` (one JSON object per
logged step), ``checkpoints/checkpoint-<step>/`` (`hf_wavepos.training.checkpoint`; LoRA runs keep
only the trained tensors), ``final/`` or ``adapter/`` + ``merged/``, ``train_summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from hf_wavepos.training import checkpoint as ckpt
from hf_wavepos.training.experiment_config import TrainConfig
from hf_wavepos.training.lora import merge_adapter
from hf_wavepos.training.modeling import instantiate_model, model_config, resolve_position

CONFIG_FILE = "train_config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "train_summary.json"

# Settings that decide which data a step sees and which network it trains: a resumed run must
# keep them (the budget, logging, evaluation and checkpoint settings may change).
RESUME_FIXED = ("model", "data", "lora", "distill", "train.seed", "train.global_batch_size", "optim", "schedule")


def check_resume_config(config: TrainConfig, output_dir: Path) -> None:
    """Refuse to resume the run in ``output_dir`` with other `RESUME_FIXED` settings.

    Raises:
        ValueError: naming the settings that differ from the run's ``train_config.yaml``.
    """
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


def write_metrics(output_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``metrics.jsonl``."""
    with open(output_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def save_run_checkpoint(accelerator: Any, config: TrainConfig, step: int, train_loss: float | None) -> None:
    """Save the training state after ``step`` (atomic; keeps ``checkpoint.keep_last``)."""
    tokens = step * config.train.global_batch_size * config.data.block_size
    path = ckpt.save_checkpoint(
        accelerator, config.output_dir, step, {"step": step, "tokens": tokens, "train_loss": train_loss},
        config.checkpoint.keep_last,
    )
    accelerator.print(f"checkpoint saved: step {step} -> {path}", flush=True)


def checkpoint_trainable_only(accelerator: Any, model: Any) -> None:
    """Make checkpoints keep only the trained tensors (LoRA: adapters, trained embeddings / norms).

    The frozen base is rebuilt from ``model.pretrained`` on resume.
    """
    names = {name for name, p in model.named_parameters() if p.requires_grad}

    def keep_trained(models: list, weights: list, output_dir: str) -> None:
        for i, state_dict in enumerate(weights):
            weights[i] = {k: v for k, v in state_dict.items() if k in names}

    accelerator.register_save_state_pre_hook(keep_trained)


def load_lora_checkpoint(accelerator: Any, model: Any, checkpoint: Path) -> dict[str, Any]:
    """Resume a LoRA run from ``checkpoint``; returns its trainer state.

    Raises:
        ValueError: when the checkpoint lacks a tensor this run trains (it is from another run).
    """
    from accelerate.utils import DistributedType
    from safetensors import safe_open

    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        return ckpt.load_checkpoint(accelerator, checkpoint)  # their checkpoints hold the whole model
    weights = Path(checkpoint) / "model.safetensors"
    if weights.is_file():  # saved by checkpoint_trainable_only: only the trained tensors
        with safe_open(str(weights), "pt") as handle:
            stored = set(handle.keys())
        missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in stored)
        if missing:
            raise ValueError(f"checkpoint {checkpoint} lacks trained tensors {missing[:5]}: it is not from this run.")
    accelerator.load_state(str(checkpoint), strict=False)
    return ckpt.read_state(checkpoint)


def save_final(accelerator: Any, model: Any, tokenizer: Any, config: TrainConfig) -> tuple[str | None, str | None]:
    """Save the trained model with its tokenizer and config: (final model folder, adapter folder).

    LoRA runs save the adapter and, with ``lora.save_merged``, the merged model; others ``final/``.
    """
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
