"""How a run sits on Accelerate: the machine check, the `Accelerator`, and DeepSpeed's settings.

The loop derives gradient accumulation from ``train.global_batch_size`` (`BatchPlan`), so a launch
configuration must not set it; and as the loop prepares no dataloader, DeepSpeed is told the
micro-batch, the accumulation and the clipping here (`deepspeed_settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hf_wavepos.training.batches import BatchPlan
from hf_wavepos.training.experiment_config import TrainConfig


def has_accelerator() -> bool:
    """True when torch sees a GPU (or another accelerator) on this machine."""
    accel = getattr(torch, "accelerator", None)
    if accel is not None and hasattr(accel, "is_available"):
        return bool(accel.is_available())
    return torch.cuda.is_available()


def refuse_sharding_without_gpu() -> None:
    """Accelerate runs FSDP and DeepSpeed only on GPUs; on a CPU-only machine it would silently train
    plain data-parallel instead, with none of the sharding the launch config asked for.

    Raises:
        ValueError: when the launch environment asks for FSDP or DeepSpeed.
    """
    from accelerate.utils import parse_flag_from_env

    for flag, backend in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if parse_flag_from_env(flag):
            raise ValueError(
                f"the launch config asks for {backend} ({flag}=true), but this machine has no GPU and Accelerate "
                f"runs {backend} only on GPUs (it would fall back to unsharded data parallel). On a CPU use "
                "recipes/accelerate/cpu_2proc.yaml, or launch on a GPU machine."
            )


def deepspeed_settings(plan: BatchPlan, max_grad_norm: float | None) -> dict[str, Any]:
    """The entries a run sets in DeepSpeed's config: micro-batch, accumulation, clipping.

    Args:
        plan: the run's split of the global batch.
        max_grad_norm: ``optim.max_grad_norm`` (None: DeepSpeed's clipping is left as configured).

    Returns:
        A dict to merge into ``deepspeed_plugin.deepspeed_config``.
    """
    settings: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.per_device_batch_size,
        "gradient_accumulation_steps": plan.accumulation_steps,
    }
    if max_grad_norm is not None:
        settings["gradient_clipping"] = max_grad_norm
    return settings


def make_accelerator(config: TrainConfig, plan: BatchPlan, cpu: bool) -> Any:
    """The run's `accelerate.Accelerator`: precision, accumulation from ``plan``, trackers, DeepSpeed.

    Raises:
        ValueError: when the launch configuration sets a different gradient accumulation.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    output_dir = Path(config.output_dir)
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
    if deepspeed is not None:
        deepspeed.deepspeed_config.update(deepspeed_settings(plan, config.optim.max_grad_norm))
    return accelerator
