"""Command line shared by the scripts in ``recipes/`` (each is a few lines around `run_recipe`).

    accelerate launch [--config_file recipes/accelerate/<launch>.yaml] recipes/<recipe>.py \\
        <experiment.yaml> [section.key=value ...] [--output_dir DIR] [--resume_from_checkpoint latest|DIR]

The recipe kind only checks that the experiment fits the script (pretraining starts from
scratch, continued pretraining and LoRA start from ``model.pretrained``); all three run the same
`hf_wavepos.training.loop.train`.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from hf_wavepos.training.experiment_config import TrainConfig, load_config
from hf_wavepos.training.loop import TrainResult, train

RECIPES = {
    "pretrain": "pretraining from scratch with a chosen position method",
    "continue": "continued pretraining of a checkpoint converted to wavelet positions at a target length",
    "lora": "LoRA fine-tuning (PEFT) of a converted checkpoint; optionally embeddings and norms (LongLoRA)",
}


def check_recipe(kind: str, config: TrainConfig) -> None:
    """Raise ValueError when ``config`` does not fit the recipe ``kind`` (see `RECIPES`)."""
    if kind not in RECIPES:
        raise ValueError(f"unknown recipe {kind!r}; allowed values: {', '.join(RECIPES)}.")
    pretrained = config.model.pretrained is not None
    if kind == "pretrain" and (pretrained or config.lora.enabled):
        raise ValueError(
            "recipes/pretrain.py trains from scratch: leave model.pretrained unset and lora.enabled false "
            "(use continue_pretrain.py or lora_extend.py for checkpoints)."
        )
    if kind in ("continue", "lora") and not pretrained:
        raise ValueError(f"the {kind} recipe starts from a checkpoint: set model.pretrained (a Hub name or a folder).")
    if kind == "continue" and config.lora.enabled:
        raise ValueError("continue_pretrain.py trains all weights: set lora.enabled false (or use lora_extend.py).")
    if kind == "lora" and not config.lora.enabled:
        raise ValueError("lora_extend.py trains LoRA adapters: set lora.enabled true in the experiment.")


def build_parser(kind: str) -> argparse.ArgumentParser:
    """Argument parser of one recipe script."""
    parser = argparse.ArgumentParser(description=f"hf_wavepos recipe: {RECIPES[kind]}.")
    parser.add_argument("config", help="experiment YAML (recipes/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=20")
    parser.add_argument("--output_dir", help="shortcut for output_dir=DIR")
    parser.add_argument(
        "--resume_from_checkpoint", metavar="latest|DIR",
        help="continue a run: 'latest' picks the newest complete checkpoint of output_dir",
    )
    parser.add_argument("--print_config", action="store_true", help="print the resolved experiment and exit")
    return parser


def run_recipe(kind: str, argv: Sequence[str] | None = None) -> TrainResult | None:
    """Parse a recipe's command line, validate the experiment, train.

    Args:
        kind: ``"pretrain"``, ``"continue"`` or ``"lora"``.
        argv: arguments (None: ``sys.argv[1:]``).

    Returns:
        The `TrainResult`, or None with ``--print_config``.
    """
    args = build_parser(kind).parse_intermixed_args(argv)
    overrides = list(args.overrides) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
    config = load_config(args.config, overrides)
    check_recipe(kind, config)
    if args.print_config:
        print(config.to_yaml())
        return None
    return train(config, resume_from_checkpoint=args.resume_from_checkpoint)
