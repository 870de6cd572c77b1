"""Training on Accelerate: one loop for pretraining, continued pretraining and LoRA context extension.

    from hf_wavepos.training import load_config, train
    result = train(load_config("recipes/configs/tiny_cpu.yaml", ["train.max_steps=20"]))

The scripts in ``recipes/`` are thin command lines around `run_recipe`.
"""

from hf_wavepos.training.batches import BatchPlan, PackedBatches, StreamingBatches
from hf_wavepos.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from hf_wavepos.training.experiment_config import TrainConfig, load_config
from hf_wavepos.training.yaml_dataclasses import apply_overrides
from hf_wavepos.training.lora import lora_config, merge_adapter, wrap_lora
from hf_wavepos.training.loop import (
    TrainResult,
    end_step,
    evaluate,
    finish_run,
    merge_lora_from_config,
    step_actions,
    token_loss_sum,
    train,
    train_step,
)
from hf_wavepos.training.modeling import check_model_inputs, instantiate_model, model_config, resolve_position
from hf_wavepos.training.recipe import RECIPES, check_recipe, run_recipe
from hf_wavepos.training.run import Run, build_run, prepare_run

__all__ = [
    "BatchPlan",
    "PackedBatches",
    "RECIPES",
    "Run",
    "StreamingBatches",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "build_run",
    "check_model_inputs",
    "check_recipe",
    "end_step",
    "evaluate",
    "finish_run",
    "instantiate_model",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "lora_config",
    "merge_adapter",
    "merge_lora_from_config",
    "model_config",
    "prepare_run",
    "resolve_position",
    "run_recipe",
    "save_checkpoint",
    "step_actions",
    "token_loss_sum",
    "train",
    "train_step",
    "wrap_lora",
]
