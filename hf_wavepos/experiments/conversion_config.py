"""Settings of `hf_wavepos.experiments.conversion`: the methods (position x recalibration recipe)
and `ConversionConfig`, read from a shipped or user YAML file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROPE_SCALING = {"rope-linear": "linear", "rope-dynamic": "dynamic", "rope-yarn": "yarn"}
CONVERTED: dict[str, Any] = {
    "nope": {"method": "nope"},
    "alibi": {"method": "alibi"},
    "long": "long",
    "oka2025": "oka2025",
    "oka2025-4k": "oka2025-4k",
}
POSITIONS = ("rope", *ROPE_SCALING, *CONVERTED)
RECIPES = {
    "zero-shot": "no training",
    "plain": "all weights, next-token loss",
    "distill": "all weights, KL to the stock model + (1 - distill_weight) x next-token loss",
    "lora": "LoRA (q, k, v, o) + trainable norms, next-token loss",
    "lora-distill": "LoRA (q, k, v, o) + trainable norms, distillation loss",
    "transfer": "attention transfer: every attention layer matches the stock one (transfer_trainable)",
    "transfer-distill": "attention transfer, then distillation to the stock model's logits (transfer_distill_trainable)",
}
TRANSFER_RECIPES = ("transfer", "transfer-distill")
"""Recipes whose first stage is attention transfer for ``transfer_steps`` (shared by both: the
``transfer-distill`` run continues from the ``transfer`` run of the same position)."""


def parse_method(method: str) -> tuple[str, str]:
    """``"long:distill"`` -> ``("long", "distill")`` (see the module docstring).

    Raises:
        ValueError: an unknown position or recipe, naming the allowed ones.
    """
    position, sep, recipe = method.partition(":")
    if not sep or position not in POSITIONS or recipe not in RECIPES:
        raise ValueError(f"method {method!r} must be POSITION:RECIPE with POSITION in {', '.join(POSITIONS)} and "
                         f"RECIPE in {', '.join(RECIPES)} (e.g. long:distill).")
    return position, recipe


@dataclass(frozen=True)
class ConversionConfig:
    """One conversion benchmark: source model, methods, recalibration budget, evaluation.

    Lengths are in tokens of the source model's tokenizer; ``lengths`` = ``length_multiples`` x
    ``block_size`` (the recalibration length). ``control`` is the trained method every other one
    is compared with; `subset` always keeps it.

    Raises:
        ValueError: an invalid method or value, naming the field and what is allowed.
    """

    source: str = "SmolLM2-135M-Instruct.Q4_1.gguf"  # folder, Hub id, .gguf file or a folder with one
    gguf_file: str | None = None
    methods: tuple[str, ...] = ("rope:plain", "nope:distill", "long:distill")
    control: str = "rope:plain"
    block_size: int = 256
    steps: int = 100
    global_batch_size: int = 4
    per_device_batch_size: int | None = None
    lr: float = 3e-4
    lora_lr: float = 2e-3  # LoRA recipes (adapters start at zero)
    transfer_steps: int = 100  # attention transfer stage of the transfer recipes (same batch and blocks)
    transfer_lr: float = 3e-3
    transfer_trainable: tuple[str, ...] | None = None  # modules attention transfer trains; None: query/key projections
    transfer_distill_lr: float | None = None  # second stage of transfer-distill; None: lr
    transfer_distill_trainable: tuple[str, ...] | None = None  # its trained modules; None: all weights
    warmup_steps: int = 10
    weight_decay: float = 0.0
    seed: int = 0
    train_documents: int | None = 400
    heldout_documents: int = 60
    eval_every: int = 25
    eval_blocks: int = 16
    eval_documents: int = 8
    length_multiples: tuple[float, ...] = (1, 4, 8)
    extension_length: int | None = None
    extension_documents: int = 4
    extension_methods: tuple[str, ...] | None = None  # None: every method; (): none
    extension_passkey: bool = True  # passkey accuracy at extension_length too, for the extension methods
    passkey_multiples: tuple[float, ...] = (1, 4, 8)
    passkey_depths: tuple[float, ...] = (0.0, 0.5, 1.0)
    passkey_samples: int = 2
    passkey_haystack: str = "debian-faq"
    distill_weight: float = 0.9
    distill_temperature: float = 1.0
    lora_r: int = 16
    lora_alpha: float = 32.0
    rope_factor: float = 2.0
    threads: int | None = 2
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    eval_batch_size: int = 1

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods is empty; name at least one POSITION:RECIPE, e.g. rope:plain.")
        for method in (*self.methods, self.control, *(self.extension_methods or ())):
            parse_method(method)
        missing = [m for m in self.extension_methods or () if m not in self.methods]
        if missing:
            raise ValueError(f"extension_methods {missing} are not in methods; list only benchmarked methods.")
        if self.control not in self.methods or parse_method(self.control)[1] == "zero-shot":
            raise ValueError(f"control={self.control!r} must be one of the trained methods (default rope:plain).")
        for name in ("block_size", "steps", "transfer_steps", "global_batch_size", "eval_every", "eval_blocks", "eval_documents",
                     "heldout_documents", "passkey_samples", "extension_documents"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not self.rope_factor >= 1:
            raise ValueError(f"rope_factor must be >= 1 (the context extension factor), got {self.rope_factor}.")
        for name in ("transfer_trainable", "transfer_distill_trainable"):
            value = getattr(self, name)
            if value is not None and (not value or not all(isinstance(v, str) and v for v in value)):
                raise ValueError(f"{name} must be a non-empty list of module names (e.g. [q_proj, k_proj]) or null, "
                                 f"got {value!r}.")
        if self.transfer_distill_lr is not None and not self.transfer_distill_lr > 0:
            raise ValueError(f"transfer_distill_lr must be a positive learning rate or null, got {self.transfer_distill_lr}.")
        if not 0 < self.distill_weight <= 1:
            raise ValueError(f"distill_weight must be in (0, 1], got {self.distill_weight}.")
        _check_values(self)

    def subset(self, methods: tuple[str, ...]) -> "ConversionConfig":
        """The same benchmark for a subset of its methods (``extension_methods`` restricted alike).

        The control method (``control``, e.g. ``rope:plain``: every method's perplexity is compared
        with it) is always kept, first, whether ``methods`` names it or not.

        Raises:
            ValueError: an invalid method name (see `parse_method`).
        """
        methods = (self.control, *(m for m in dict.fromkeys(methods) if m != self.control))
        extension = tuple(m for m in self.extension_methods if m in methods) if self.extension_methods else None
        return dataclasses.replace(self, methods=methods, extension_methods=extension)

    @property
    def lengths(self) -> list[int]:
        """Perplexity lengths in tokens."""
        return sorted({int(self.block_size * m) for m in self.length_multiples})

    @property
    def passkey_lengths(self) -> list[int]:
        """Passkey prompt lengths in tokens."""
        return sorted({int(self.block_size * m) for m in self.passkey_multiples})

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "ConversionConfig":
        """Read a YAML file of fields, or a shipped config by name (see `read_bench_config`).

        Raises:
            FileNotFoundError: neither a file nor a shipped name.
            ValueError: unknown keys (listing the known ones) or invalid values.
        """
        from hf_wavepos.experiments.bench_configs import read_bench_config

        return read_bench_config(cls, path, overrides)


def _check_values(config: ConversionConfig) -> None:
    """The value checks of `ConversionConfig` beyond the methods: those all benchmarks share
    (`check_shared_values`: learning rates, threads, length multiples, mixed precision) and the
    passkey settings. Field types are checked when the file is read (`read_bench_config`).

    Raises:
        ValueError: naming the field, the value and what is allowed.
    """
    from hf_wavepos.experiments.bench_configs import check_shared_values

    check_shared_values(config, rates=("lr", "lora_lr", "transfer_lr"))
    number = (int, float)
    if not config.passkey_multiples or not all(
            isinstance(m, number) and not isinstance(m, bool) and m > 0 for m in config.passkey_multiples):
        raise ValueError(f"passkey_multiples must be a non-empty list of positive multiples of block_size (e.g. [1, 4, 8]), "
                         f"got {config.passkey_multiples!r}.")
    if not config.passkey_depths or not all(
            isinstance(d, number) and not isinstance(d, bool) and 0 <= d <= 1 for d in config.passkey_depths):
        raise ValueError(f"passkey_depths must be a non-empty list of fractions in [0, 1] (0: passkey at the start, "
                         f"1: at the end), got {config.passkey_depths!r}.")


def slug(method: str) -> str:
    """Folder name of a method: ``long:distill`` -> ``long_distill``."""
    return method.replace(":", "_")
