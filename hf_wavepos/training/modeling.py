"""Build the model a recipe trains: from scratch or a checkpoint, with the chosen position method.

The work is split so every check runs before any weight is loaded or any step is taken:

1. `resolve_position` turns ``model.position`` into ``"rope"``, ``"keep"`` or a `WavePosConfig`
   (an unknown preset or field is an error here);
2. `model_config` builds (scratch) or reads (pretrained) the transformers config, without weights;
3. `check_model_inputs` compares config, tokenizer, block size and position method;
4. `instantiate_model` creates or loads the weights and converts the positions with
   `hf_wavepos.apply_wavepos` (weights kept; RoPE / learned ``wpe`` replaced by the wavelet term).
"""

from __future__ import annotations

from typing import Any

import torch

from hf_wavepos.config import WavePosConfig, resolve_config
from hf_wavepos.models.registry import (
    ARCHITECTURES,
    apply_wavepos,
    architecture_of,
    is_wavepos_model_type,
    registered_architectures,
)
from hf_wavepos.training.experiment_config import KEEP_POSITIONS, MODEL_SIZES, ModelSection


def resolve_position(position: Any, block_size: int) -> str | WavePosConfig:
    """The position method of ``model.position``.

    Args:
        position: ``"rope"``, ``"keep"``, a preset name, a wavepos dict, or a dict with a
            ``preset`` key plus fields to override (``{preset: long, train_length: 4096}``).
        block_size: training length; a *preset* with log-n query scaling gets
            ``train_length = block_size`` (an explicit dict keeps its own value).

    Returns:
        ``"rope"`` / ``"keep"``, or the validated `WavePosConfig`.
    """
    if isinstance(position, str) and position in KEEP_POSITIONS:
        return position
    try:
        if isinstance(position, str):
            config = resolve_config(position)
            if config.log_n_scaling and config.train_length != block_size:
                config = config.replace(train_length=block_size)
            return config
        return resolve_config(position)
    except ValueError as err:
        raise ValueError(f"model.position: {err} ('rope' and 'keep' are also allowed.)") from err


def _scratch_config(section: ModelSection, vocab_size: int, block_size: int, tokenizer: Any) -> Any:
    hidden, layers, heads = MODEL_SIZES[section.size]
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return architecture_of(section.architecture).scratch_config(
        vocab_size=vocab_size, hidden_size=hidden, layers=layers, heads=heads, max_positions=block_size, **special,
    )


def model_config(section: ModelSection, tokenizer: Any, block_size: int) -> Any:
    """The transformers config of the model to train (no weights are read).

    Args:
        section: the ``model`` section.
        tokenizer: the tokenizer the data is encoded with (sets a scratch model's vocabulary).
        block_size: training length (a scratch model's ``max_position_embeddings``).

    Returns:
        A `transformers.PretrainedConfig` with ``section.config_overrides`` applied.
    """
    if section.pretrained is not None:
        from transformers import AutoConfig

        from hf_wavepos.sources import loading

        with loading(section.pretrained, "model.pretrained"):
            config = AutoConfig.from_pretrained(section.pretrained, trust_remote_code=section.trust_remote_code)
    else:
        config = _scratch_config(section, len(tokenizer), block_size, tokenizer)
    for key, value in section.config_overrides.items():
        if not hasattr(config, key):
            raise ValueError(
                f"model.config_overrides: {key!r} is not a field of {type(config).__name__}; "
                "use the stock config's own names (e.g. num_hidden_layers, n_layer for GPT-2)."
            )
        setattr(config, key, value)
    resized = {"hidden_size", "num_attention_heads"} & set(section.config_overrides)
    if section.pretrained is None and resized and "head_dim" not in section.config_overrides and getattr(config, "head_dim", None):
        config.head_dim = config.hidden_size // config.num_attention_heads  # follow the new width, as a fresh config would
    return config


def check_model_inputs(config: Any, tokenizer: Any, block_size: int, position: str | WavePosConfig) -> None:
    """Raise ValueError on a tokenizer/model mismatch or a block size the positions cannot train at.

    Args:
        config: the model's transformers config.
        tokenizer: the data's tokenizer.
        block_size: training length.
        position: result of `resolve_position`.
    """
    model_type = getattr(config, "model_type", "")
    vocab = config.vocab_size
    if len(tokenizer) > vocab:
        raise ValueError(
            f"tokenizer/model mismatch: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary holds "
            f"{vocab}; train with the checkpoint's own tokenizer (model.tokenizer: null) or one that fits."
        )
    if len(tokenizer) < vocab // 2:
        raise ValueError(
            f"tokenizer/model mismatch: the tokenizer has {len(tokenizer)} tokens but the model was built for "
            f"{vocab}; this tokenizer is not the model's. Set model.tokenizer to the checkpoint's tokenizer "
            "(or null to use the one saved with it)."
        )
    eos = getattr(config, "eos_token_id", None)
    eos_ids = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    if tokenizer.eos_token_id is not None and eos is not None and tokenizer.eos_token_id not in eos_ids:
        raise ValueError(
            f"tokenizer/model mismatch: the tokenizer's EOS id is {tokenizer.eos_token_id}, the model's is {eos}; "
            "set model.tokenizer to the checkpoint's tokenizer (or null to use the one saved with it)."
        )

    arch = ARCHITECTURES.get(model_type)
    if position == "rope" and is_wavepos_model_type(model_type):
        raise ValueError(
            f"model.position='rope' but the checkpoint is already a {model_type} model (wavelet positions); "
            "use model.position: keep to train it as it is."
        )
    if isinstance(position, WavePosConfig):
        _check_convertible(config, arch, position)
    limit_field = arch.learned_positions_field if arch is not None and model_type == arch.stock_model_type else None
    if limit_field and not isinstance(position, WavePosConfig) and block_size > getattr(config, limit_field):
        raise ValueError(
            f"data.block_size={block_size} is above what {arch.name}'s learned absolute positions can train at "
            f"({limit_field}={getattr(config, limit_field)}). Lower data.block_size, or convert the model to wavelet "
            "positions (model.position: oka2025), which have no maximum length."
        )


def _check_convertible(config: Any, arch: Any, position: WavePosConfig) -> None:
    """Raise ValueError unless a model of ``config`` can be converted to ``position``."""
    if arch is None:
        names = [a.stock_model_type for a in registered_architectures()]
        raise ValueError(
            f"model type {getattr(config, 'model_type', '')!r} cannot be converted to wavelet positions; supported: "
            f"{', '.join(names)}. Use model.position: rope to train it unchanged."
        )
    name = arch.attention_dropout_field
    if float(getattr(config, name, 0.0) or 0.0) > 0:
        raise ValueError(
            f"the checkpoint's {name}={getattr(config, name)} is attention dropout, which the wavepos attention "
            f"backends do not support; add model.config_overrides: {{{name}: 0.0}} to convert it."
        )
    if position.method == "wavelet":
        try:
            position.check_head_dim(arch.head_dim(config))
        except ValueError as err:
            raise ValueError(f"model.position does not fit this model: {err}") from err


def instantiate_model(
    section: ModelSection, config: Any, position: str | WavePosConfig, *, seed: int
) -> torch.nn.Module:
    """Create (scratch) or load (pretrained) the causal LM and apply the position method.

    Args:
        section: the ``model`` section (dtype, attention implementation, remote code).
        config: from `model_config` (already checked with `check_model_inputs`).
        position: from `resolve_position`.
        seed: initialisation seed of a scratch model (same weights on every process).

    Returns:
        The model in training mode.
    """
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, section.dtype)
    if section.pretrained is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=section.attn_implementation
            )
    else:
        model = AutoModelForCausalLM.from_pretrained(
            section.pretrained, config=config, dtype=dtype, attn_implementation=section.attn_implementation,
            trust_remote_code=section.trust_remote_code,
        )
    if isinstance(position, WavePosConfig):
        model = apply_wavepos(model, position)
    model.train()
    return model
