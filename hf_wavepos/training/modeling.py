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
from hf_wavepos.training.experiment_config import ARCHITECTURES, KEEP_POSITIONS, ModelSection

# Scratch shapes: (hidden, layers, heads); the feed-forward width follows the architecture's habit.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (64, 2, 4),
    "125m": (768, 12, 12),
}

WAVEPOS_PREFIX = "wavepos_"


def base_architecture(model_type: str) -> str:
    """``"wavepos_llama"`` -> ``"llama"``; stock types are returned unchanged."""
    return model_type[len(WAVEPOS_PREFIX):] if model_type.startswith(WAVEPOS_PREFIX) else model_type


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
        if isinstance(position, dict) and "preset" in position:
            fields = {k: v for k, v in position.items() if k != "preset"}
            return WavePosConfig.from_preset(position["preset"], **fields)
        return resolve_config(position)
    except ValueError as err:
        raise ValueError(f"model.position: {err} ('rope' and 'keep' are also allowed.)") from err


def _scratch_config(section: ModelSection, vocab_size: int, block_size: int, tokenizer: Any) -> Any:
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    hidden, layers, heads = SIZES[section.size]
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if section.architecture == "llama":
        ffn = 256 * round(8 * hidden / 3 / 256) if hidden >= 256 else 2 * hidden  # SwiGLU: ~8/3 x hidden
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=block_size, **special,
        )
    if section.architecture == "gpt_neox":
        return GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
            num_attention_heads=heads, max_position_embeddings=block_size, hidden_dropout=0.0,
            attention_dropout=0.0, **special,
        )
    return GPT2Config(
        vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_inner=4 * hidden,
        n_positions=block_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special,
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


def head_dim_of(config: Any) -> int:
    """Per-head size of a transformers config (``head_dim`` or hidden size / heads)."""
    explicit = getattr(config, "head_dim", None)
    return int(explicit) if explicit else config.hidden_size // config.num_attention_heads


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

    converted = model_type.startswith(WAVEPOS_PREFIX)
    if position == "rope" and converted:
        raise ValueError(
            f"model.position='rope' but the checkpoint is already a {model_type} model (wavelet positions); "
            "use model.position: keep to train it as it is."
        )
    if isinstance(position, WavePosConfig):
        if base_architecture(model_type) not in ARCHITECTURES:
            raise ValueError(
                f"model type {model_type!r} cannot be converted to wavelet positions; supported: "
                f"{', '.join(ARCHITECTURES)}. Use model.position: rope to train it unchanged."
            )
        for name in ("attention_dropout", "attn_pdrop"):
            if float(getattr(config, name, 0.0) or 0.0) > 0:
                raise ValueError(
                    f"the checkpoint's {name}={getattr(config, name)} is attention dropout, which the wavepos attention "
                    f"backends do not support; add model.config_overrides: {{{name}: 0.0}} to convert it."
                )
        if getattr(position, "method", "wavelet") == "wavelet":
            try:
                position.check_head_dim(head_dim_of(config))
            except ValueError as err:
                raise ValueError(f"model.position does not fit this model: {err}") from err
    learned_positions = model_type == "gpt2" and not isinstance(position, WavePosConfig)
    if learned_positions and block_size > config.n_positions:
        raise ValueError(
            f"data.block_size={block_size} is above what GPT-2's learned absolute positions can train at "
            f"(n_positions={config.n_positions}). Lower data.block_size, or convert the model to wavelet "
            "positions (model.position: oka2025), which have no maximum length."
        )


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
        from hf_wavepos import apply_wavepos

        model = apply_wavepos(model, position)
    model.train()
    return model
