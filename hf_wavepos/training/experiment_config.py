"""One YAML file per experiment, validated into `TrainConfig` before any compute starts.

A config has these sections (every key is optional and has a default; see each field's help):

    model:      architecture + size, or a pretrained checkpoint; position method; tokenizer
    data:       corpus (default: Python stdlib source), block size, held-out split, streaming
    train:      seed, global / per-device batch, budget (steps or tokens), precision, checkpointing of activations
    optim:      AdamW settings and gradient clipping
    schedule:   warm-up and decay of the learning rate
    lora:       PEFT LoRA (and LongLoRA's trainable embeddings / norms)
    distill:    self-distillation from a teacher (default: the checkpoint before its position conversion)
    checkpoint: how often training state is saved and how many are kept
    eval:       how often and on how many held-out blocks the validation loss is measured
    log:        trackers (TensorBoard), logging interval, run name
    output_dir: where everything is written

Command-line overrides use dotted keys: ``train.max_steps=20 optim.lr=1e-3 model.position=long``.
Values are read as YAML (``[0.9, 0.95]``, ``null``, ``true``). A misspelt key is an error that
names the closest known key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import yaml

from hf_wavepos.models.registry import registered_architectures
from hf_wavepos.training.yaml_dataclasses import apply_overrides, build_dataclass

MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    # Scratch shapes: (hidden, layers, heads); the feed-forward width follows the architecture's habit.
    "tiny": (64, 2, 4),
    "125m": (768, 12, 12),
}
KEEP_POSITIONS = ("rope", "keep")
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")
SCHEDULES = ("cosine", "linear", "constant")
DISTILL_TARGETS = ("logits", "attention")


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class ModelSection:
    """Which network to train and with which position method."""

    architecture: str | None = _help(
        "Architecture of a model trained from scratch: a stock model_type hf_wavepos supports "
        "(hf_wavepos.supported_model_types(): llama, gpt_neox, gpt2; ignored with `pretrained`).",
        "llama",
    )
    size: str = _help("Shape of a model trained from scratch: tiny (2 layers, width 64) or 125m (12 x 768).", "tiny")
    config_overrides: dict = _help(
        "Keyword arguments for the stock config class (e.g. {num_hidden_layers: 4}); scratch and pretrained.", factory=dict
    )
    pretrained: str | None = _help("Hub name or folder of a checkpoint to continue from (None: train from scratch).", None)
    tokenizer: str | None = _help(
        "'bytes', 'bpe:<vocab>' (trained on the training split), a Hub name or a folder. "
        "None: the pretrained checkpoint's tokenizer, or 'bytes' from scratch.",
        None,
    )
    position: Any = _help(
        "Position method: 'rope' (the stock model: RoPE, or GPT-2's learned positions), 'keep' (whatever the "
        "checkpoint has), a wavepos preset name (oka2025, oka2025-4k, long) or a wavepos dict "
        "(e.g. {preset fields..., method: alibi}). Presets with log-n scaling get train_length = data.block_size.",
        "rope",
    )
    dtype: str = _help("dtype the weights are loaded in: float32, bfloat16 or float16.", "float32")
    attn_implementation: str = _help("transformers attn_implementation: sdpa (default), eager, flex_attention, ...", "sdpa")
    trust_remote_code: bool = _help("Allow the checkpoint's own modeling code (needed for some Hub checkpoints).", False)

    def validate(self) -> None:
        if self.pretrained is None:
            names = [a.stock_model_type for a in registered_architectures()]
            if self.architecture not in names:
                raise ValueError(
                    f"model.architecture={self.architecture!r} is not supported; allowed values: "
                    f"{', '.join(names)} (or set model.pretrained)."
                )
            if self.size not in MODEL_SIZES:
                raise ValueError(f"model.size={self.size!r} is unknown; allowed values: {', '.join(MODEL_SIZES)}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is not allowed; allowed values: {', '.join(DTYPES)}.")
        if not isinstance(self.position, (str, dict)):
            raise ValueError(
                f"model.position must be 'rope', 'keep', a preset name or a dict, got {type(self.position).__name__}."
            )


@dataclass
class DataSection:
    """Where documents come from and how they are cut into blocks."""

    dataset: str = _help(
        "'stdlib' (embedded), 'text' / 'json' / 'parquet' (with data_files), a Hub name, or a folder of "
        "pre-packed blocks (hf_wavepos.data.blocks.save_packed_blocks; needs model.tokenizer set to their tokenizer).",
        "stdlib",
    )
    dataset_config: str | None = _help("Configuration name of a Hub dataset.", None)
    data_files: Any = _help("File path(s)/glob(s) or {split: files}; the format follows the extension.", None)
    text_column: str = _help("Column holding the document text.", "text")
    train_split: str = _help("Split to train on.", "train")
    validation_split: str | None = _help("Held-out split (None: 'validation' if present, else validation_size).", None)
    validation_size: Union[int, float] = _help(
        "Held-out documents: a fraction in (0, 1), or a count (required form when streaming).", 0.02
    )
    streaming: bool = _help("Read the corpus lazily (large corpora): no length, no global shuffle.", False)
    shuffle_buffer: int = _help("Streaming only: shuffle within a buffer of this many documents (0: off).", 0)
    max_documents: int | None = _help("Use at most this many training documents (pre-packed blocks: rows) (None: all).", None)
    block_size: int = _help("Tokens per training block (the training context length).", 512)
    add_special_tokens: bool = _help("Let the tokenizer add its markers (e.g. Llama's BOS) to each document.", True)
    append_eos: bool = _help("End each document with the tokenizer's EOS token.", True)
    num_proc: int | None = _help("Processes for tokenisation of a map-style dataset (None: in process).", None)

    def validate(self) -> None:
        if not isinstance(self.block_size, int) or self.block_size < 2:
            raise ValueError(f"data.block_size must be an integer >= 2, got {self.block_size!r}.")
        if self.max_documents is not None and self.max_documents < 1:
            raise ValueError(f"data.max_documents must be >= 1 or null, got {self.max_documents!r}.")
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}.")
        if isinstance(self.validation_size, float) and not 0 < self.validation_size < 1:
            raise ValueError(f"data.validation_size={self.validation_size} must be in (0, 1) or a whole number.")
        if isinstance(self.validation_size, int) and self.validation_size < 1:
            raise ValueError(f"data.validation_size={self.validation_size} must be >= 1 documents.")
        if self.streaming and isinstance(self.validation_size, float) and self.validation_split is None:
            raise ValueError(
                "data.streaming is on, so data.validation_size must be a number of documents (e.g. 200), "
                f"not the fraction {self.validation_size}; or set data.validation_split."
            )


@dataclass
class TrainSection:
    """Batch, budget and precision."""

    seed: int = _help("Seed for initialisation, data order and dropout.", 0)
    global_batch_size: int = _help(
        "Blocks per optimiser step over all processes; gradient accumulation = "
        "global_batch_size / (per_device_batch_size x processes).",
        8,
    )
    per_device_batch_size: int = _help("Blocks per forward pass on one process.", 8)
    max_steps: int | None = _help("Optimiser steps to train (set this or max_tokens).", None)
    max_tokens: int | None = _help("Token budget; max_steps = ceil(max_tokens / (global_batch_size x block_size)).", None)
    mixed_precision: str = _help("Accelerate mixed precision: no, bf16 or fp16.", "no")
    gradient_checkpointing: bool = _help("Recompute activations in the backward pass to save memory.", False)

    def validate(self) -> None:
        for name in ("global_batch_size", "per_device_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be a positive integer, got {getattr(self, name)!r}.")
        if (self.max_steps is None) == (self.max_tokens is None):
            raise ValueError("set exactly one of train.max_steps and train.max_tokens (the training budget).")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be >= 1, got {self.max_steps}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"train.max_tokens must be >= 1, got {self.max_tokens}.")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"train.mixed_precision={self.mixed_precision!r} is not allowed; allowed values: {', '.join(MIXED_PRECISION)}."
            )


@dataclass
class OptimSection:
    """AdamW."""

    lr: float = _help("Peak learning rate.", 3e-4)
    weight_decay: float = _help("Decoupled weight decay (matrices only; not biases, norms or LoRA-free vectors).", 0.1)
    betas: list = _help("Adam betas [beta1, beta2].", factory=lambda: [0.9, 0.95])
    eps: float = _help("Adam epsilon.", 1e-8)
    max_grad_norm: float | None = _help("Clip the global gradient norm to this (None: no clipping).", 1.0)

    def validate(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}.")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}.")
        if len(self.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}.")
        self.betas = [float(b) for b in self.betas]
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"optim.max_grad_norm must be > 0 or null, got {self.max_grad_norm}.")


@dataclass
class ScheduleSection:
    """Learning-rate schedule: linear warm-up, then decay to min_lr_ratio x lr."""

    name: str = _help("cosine, linear or constant (after warm-up).", "cosine")
    warmup_steps: int = _help("Linear warm-up steps from 0.", 0)
    min_lr_ratio: float = _help("Final learning rate as a fraction of the peak.", 0.1)

    def validate(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"schedule.name={self.name!r} is unknown; allowed values: {', '.join(SCHEDULES)}.")
        if self.warmup_steps < 0:
            raise ValueError(f"schedule.warmup_steps must be >= 0, got {self.warmup_steps}.")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}.")


@dataclass
class LoraSection:
    """PEFT LoRA; LongLoRA additionally trains the embeddings and the norms."""

    enabled: bool = _help("Train LoRA adapters instead of all weights.", False)
    r: int = _help("LoRA rank.", 8)
    alpha: float = _help("LoRA alpha (scaling = alpha / r).", 16.0)
    dropout: float = _help("Dropout on the LoRA input.", 0.0)
    target_modules: list | None = _help(
        "Module names to adapt (None: the attention projections of the architecture).", None
    )
    train_embeddings: bool = _help("Also train the input embeddings (LongLoRA).", False)
    train_norms: bool = _help("Also train every normalisation layer (LongLoRA).", False)
    save_merged: bool = _help("Besides the adapter, save the merged full model.", True)

    def validate(self) -> None:
        if self.r < 1:
            raise ValueError(f"lora.r must be >= 1, got {self.r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}.")


@dataclass
class DistillSection:
    """Knowledge distillation (Hinton et al., 2015): KL to a teacher's logits on the same blocks."""

    enabled: bool = _help("Add the distillation term to the loss (hf_wavepos.training.distill).", False)
    teacher: str | None = _help(
        "Teacher checkpoint (folder or Hub name). None: model.pretrained with its original positions (a wavepos "
        "checkpoint is reverted to its stock RoPE): self-distillation of a converted model from itself.", None
    )
    weight: float = _help("Share of the KL term: loss = weight x KL + (1 - weight) x next-token loss.", 1.0)
    temperature: float = _help("Softmax temperature of both distributions (the KL is scaled by T^2).", 1.0)
    target: str = _help(
        "What the student matches: 'logits' (the next-token distribution; weight and temperature apply) or "
        "'attention' (every attention layer's output on the teacher's hidden states: attention transfer, "
        "hf_wavepos.training.attention_transfer).", "logits"
    )
    trainable: list | None = _help(
        "Train only the modules with these names (e.g. [q_proj, k_proj]); None: the query/key projections of the "
        "architecture for target 'attention', every parameter for 'logits'.", None
    )

    def validate(self) -> None:
        if self.target not in DISTILL_TARGETS:
            raise ValueError(f"distill.target={self.target!r} is not allowed; allowed values: {', '.join(DISTILL_TARGETS)}.")
        if self.trainable is not None and (not isinstance(self.trainable, list) or not self.trainable
                                           or not all(isinstance(n, str) for n in self.trainable)):
            raise ValueError(f"distill.trainable must be a non-empty list of module names or null, got {self.trainable!r}.")
        if not 0 < self.weight <= 1:
            raise ValueError(f"distill.weight must be in (0, 1], got {self.weight}.")
        if not self.temperature > 0:
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature}.")


@dataclass
class CheckpointSection:
    """Training-state checkpoints (model, optimiser, scheduler, RNG, data position)."""

    every_steps: int | None = _help("Save every this many optimiser steps (None: only at the end).", None)
    keep_last: int = _help("Keep this many most recent checkpoints (older ones are deleted).", 2)

    def validate(self) -> None:
        if self.every_steps is not None and self.every_steps < 1:
            raise ValueError(f"checkpoint.every_steps must be >= 1 or null, got {self.every_steps}.")
        if self.keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}.")


@dataclass
class EvalSection:
    """Validation loss on held-out blocks."""

    every_steps: int | None = _help("Evaluate every this many steps (None: only at the end).", None)
    max_blocks: int = _help("Held-out blocks per evaluation.", 64)
    at_start: bool = _help("Also evaluate before the first step (step 0: e.g. right after a position conversion).", False)

    def validate(self) -> None:
        if self.every_steps is not None and self.every_steps < 1:
            raise ValueError(f"eval.every_steps must be >= 1 or null, got {self.every_steps}.")
        if self.max_blocks < 1:
            raise ValueError(f"eval.max_blocks must be >= 1, got {self.max_blocks}.")


@dataclass
class LogSection:
    """Where metrics go."""

    trackers: list = _help("Accelerate trackers (tensorboard, wandb, ...); [] for none.", factory=lambda: ["tensorboard"])
    every_steps: int = _help("Log training metrics every this many steps.", 10)
    run_name: str = _help("Name of the run for the trackers.", "wavepos")

    def validate(self) -> None:
        if self.every_steps < 1:
            raise ValueError(f"log.every_steps must be >= 1, got {self.every_steps}.")


@dataclass
class TrainConfig:
    """A whole experiment. Build it with `load_config` (YAML + overrides) or `TrainConfig.from_dict`."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=lambda: TrainSection(max_steps=100))
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    lora: LoraSection = field(default_factory=LoraSection)
    distill: DistillSection = field(default_factory=DistillSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)
    output_dir: str = field(default="runs/train", metadata={"help": "Folder for checkpoints, logs and the final model."})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate()
        if self.lora.enabled and self.model.pretrained is None:
            raise ValueError("lora.enabled needs model.pretrained (LoRA adapts an existing checkpoint).")
        if self.distill.enabled and self.distill.teacher is None and self.model.pretrained is None:
            raise ValueError("distill.enabled needs distill.teacher or model.pretrained (the default teacher).")
        if self.distill.enabled and self.distill.trainable is not None and self.lora.enabled:
            raise ValueError("distill.trainable and lora.enabled both choose the trained parameters; set one of them.")
        if self.distill.enabled and self.distill.target == "attention" and self.train.gradient_checkpointing:
            raise ValueError("distill.target attention cannot run with train.gradient_checkpointing (recomputed layers "
                             "would not see the teacher's hidden states); it needs little memory anyway: set "
                             "train.gradient_checkpointing false.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Validate a nested dict (as read from YAML); unknown keys raise ValueError with a suggestion."""
        return build_dataclass(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable), the inverse of `from_dict`."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The config as YAML text."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """``{"section/key": value}`` with scalars only (lists, dicts and None as text), for trackers."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            items = values.items() if isinstance(values, dict) else [("", values)]
            for key, value in items:
                name = f"{section}/{key}" if key else section
                out[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
        return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML experiment file, apply command-line overrides, validate.

    Args:
        path: YAML file (None: defaults only).
        overrides: ``section.key=value`` strings, applied after the file.

    Returns:
        The validated `TrainConfig`.

    Raises:
        ValueError: unknown keys (with the closest known key), bad values (naming the field).
    """
    data: Any = {}
    if path is not None:
        text = Path(path).read_text()
        data = yaml.safe_load(text) or {}
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}.")
    return TrainConfig.from_dict(apply_overrides(data, overrides))
