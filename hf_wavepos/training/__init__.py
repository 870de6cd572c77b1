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
from hf_wavepos.training.loop import TrainResult, evaluate, merge_lora_from_config, token_loss_sum, train
from hf_wavepos.training.modeling import check_model_inputs, instantiate_model, model_config, resolve_position
from hf_wavepos.training.recipe import RECIPES, check_recipe, run_recipe

__all__ = [
    "RECIPES",
    "BatchPlan",
    "PackedBatches",
    "StreamingBatches",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "check_model_inputs",
    "check_recipe",
    "evaluate",
    "instantiate_model",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_config",
    "lora_config",
    "merge_adapter",
    "merge_lora_from_config",
    "model_config",
    "resolve_position",
    "run_recipe",
    "save_checkpoint",
    "token_loss_sum",
    "train",
    "wrap_lora",
]
