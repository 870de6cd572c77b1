"""Architectures, in-place conversion (`apply_wavepos` / `revert_wavepos`) and Auto registration.

Adding an architecture is one file (config subclass, attention subclass, model classes,
``CLASS_MAP``) plus one `Architecture` entry here, keyed by the stock ``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import AttentionInterface, AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from hf_wavepos.attention.dispatch import available_backends
from hf_wavepos.config import WavePosConfig, resolve_config
from hf_wavepos.models import gpt2, gpt_neox, llama
from hf_wavepos.models.common import UNSUPPORTED_IMPLEMENTATIONS, swap_classes, unsupported_attention_error
from hf_wavepos.models.remote import auto_map


@dataclass(frozen=True)
class Architecture:
    """How one stock architecture becomes its wavepos twin."""

    stock_model_type: str
    model_type: str
    source_file: str  # package-relative file with the model classes (for the remote code)
    config_class: type
    base_class: type
    causal_lm_class: type
    class_map: dict[type, type]
    head_dim: Callable[[Any], int]
    lora_target_modules: tuple[str, ...]
    on_apply: Callable[[torch.nn.Module], None] | None = None
    on_revert: Callable[[torch.nn.Module], None] | None = None
    stock_config_class: type = field(default=object)

    def auto_map(self) -> dict[str, str]:
        return auto_map(self.model_type, self.config_class.__name__, self.base_class.__name__,
                        self.causal_lm_class.__name__)


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> None:
    """Register ``arch`` (keyed by its stock and its wavepos model_type) with transformers' Auto classes."""
    ARCHITECTURES[arch.stock_model_type] = arch
    ARCHITECTURES[arch.model_type] = arch
    AutoConfig.register(arch.model_type, arch.config_class, exist_ok=True)
    AutoModel.register(arch.config_class, arch.base_class, exist_ok=True)
    AutoModelForCausalLM.register(arch.config_class, arch.causal_lm_class, exist_ok=True)


def supported_model_types() -> list[str]:
    """Stock model types `apply_wavepos` converts."""
    return sorted({a.stock_model_type for a in ARCHITECTURES.values()})


def architecture_of(model_type: str) -> Architecture:
    """The `Architecture` for a stock or wavepos ``model_type``; ValueError listing supported ones."""
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(
            f"model_type {model_type!r} is not supported by hf_wavepos; supported: "
            f"{', '.join(supported_model_types())}."
        ) from None


_ORIGINAL = "_wavepos_original_config_class"
# from_pretrained records the stock class's checkpoint renames (GPT-NeoX: embed_out -> lm_head) on the
# instance for save_pretrained to undo; the wavepos classes load without them, so a converted model
# sets them aside and saves its parameters under their own names.
_WEIGHT_CONVERSIONS = "_weight_conversions"
_SAVED_CONVERSIONS = "_wavepos_stock_weight_conversions"


def apply_wavepos(model: torch.nn.Module, config_or_preset: WavePosConfig | str | dict = "oka2025") -> torch.nn.Module:
    """Convert a loaded stock model to wavelet (or ALiBi / NoPE) positions, in place.

    Weights are kept; attention modules get the wavepos class (RoPE skipped, GPT-2's ``wpe``
    set aside), and the config becomes the wavepos config type with a ``wavepos`` section, so
    ``save_pretrained`` writes a wavepos checkpoint. Applying to an already converted model
    replaces its position config.

    Args:
        model: a Llama, GPT-NeoX or GPT-2 model (``...ForCausalLM`` or the base model).
        config_or_preset: a `WavePosConfig`, a preset name (``oka2025``, ``oka2025-4k``, ``long``,
            ``alibi``, ``nope``) or a ``wavepos`` dict.

    Returns:
        ``model`` itself.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"apply_wavepos needs a transformers model with a .config, got {type(model).__name__}.")
    arch = architecture_of(config.model_type)
    wp = resolve_config(config_or_preset)
    wp.check_head_dim(arch.head_dim(config))
    implementation = getattr(config, "_attn_implementation", None)
    if isinstance(implementation, str) and (implementation in UNSUPPORTED_IMPLEMENTATIONS or "flash" in implementation):
        raise unsupported_attention_error(implementation)
    if config.model_type == arch.stock_model_type:
        # from_pretrained may store model_type on the instance, hiding the class attribute.
        model.__dict__[_ORIGINAL] = (type(config), config.__dict__.pop("model_type", None))
        if _WEIGHT_CONVERSIONS in model.__dict__:
            model.__dict__[_SAVED_CONVERSIONS] = model.__dict__.pop(_WEIGHT_CONVERSIONS)
        config.__class__ = arch.config_class
        swap_classes(model, arch.class_map)
        if arch.on_apply is not None:
            arch.on_apply(model)
    config.wavepos = wp.to_dict()
    return model


def revert_wavepos(model: torch.nn.Module) -> torch.nn.Module:
    """Undo `apply_wavepos` in place: the stock classes, config type and (GPT-2) ``wpe`` return.

    A model converted by `apply_wavepos` gives bit-identical outputs to before its conversion.
    """
    config = model.config
    arch = architecture_of(config.model_type)
    if config.model_type == arch.stock_model_type:
        raise ValueError(f"{type(model).__name__} is a stock {config.model_type} model: nothing to revert.")
    swap_classes(model, {new: old for old, new in arch.class_map.items()})
    if arch.on_revert is not None:
        arch.on_revert(model)
    config_class, instance_model_type = model.__dict__.pop(_ORIGINAL, (arch.stock_config_class, None))
    if _SAVED_CONVERSIONS in model.__dict__:
        model.__dict__[_WEIGHT_CONVERSIONS] = model.__dict__.pop(_SAVED_CONVERSIONS)
    config.__class__ = config_class
    for name in ("wavepos", "auto_map"):
        config.__dict__.pop(name, None)
    config.__dict__.pop("model_type", None)  # a loaded wavepos config may hold its type on the instance
    if instance_model_type is not None:
        config.__dict__["model_type"] = instance_model_type
    return model


def lora_target_modules(model_or_type: Any) -> list[str]:
    """PEFT LoRA target module names for a wavepos (or stock) model or model_type.

    llama: q/k/v/o_proj; gpt_neox: query_key_value; gpt2: c_attn (a Conv1D: PEFT sets
    fan_in_fan_out itself).
    """
    model_type = model_or_type if isinstance(model_or_type, str) else model_or_type.config.model_type
    return list(architecture_of(model_type).lora_target_modules)


def register_peft_defaults() -> bool:
    """Teach PEFT the default LoRA targets of the wavepos model types (if PEFT is installed)."""
    try:
        from peft.utils import constants
    except ImportError:
        return False
    mapping = constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    for arch in ARCHITECTURES.values():
        mapping.setdefault(arch.model_type, list(arch.lora_target_modules))
    return True


def _only_inside_wavepos_models(module, *args, **kwargs):
    raise ValueError(
        f"attn_implementation={module.config._attn_implementation!r} is a hf_wavepos backend: it serves wavepos "
        f"models only, not {type(module).__name__}; convert the model with hf_wavepos.apply_wavepos first."
    )


def register_attention_implementations() -> list[str]:
    """Make ``attn_implementation="wavepos_<backend>"`` valid in transformers for every backend.

    The wavepos attention modules call hf_wavepos's dispatcher themselves; the registered
    function only guards stock modules, and the mask function is sdpa's (boolean masks).
    """
    names = [f"wavepos_{name}" for name in available_backends()]
    for name in names:
        AttentionInterface.register(name, _only_inside_wavepos_models)
        AttentionMaskInterface.register(name, sdpa_mask)
    return names


register_attention_implementations()
register_architecture(Architecture(
    stock_model_type="llama", model_type="wavepos_llama", source_file="models/llama.py",
    config_class=llama.WavePosLlamaConfig, base_class=llama.WavePosLlamaModel,
    causal_lm_class=llama.WavePosLlamaForCausalLM, class_map=llama.CLASS_MAP,
    head_dim=lambda c: getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
    stock_config_class=llama.LlamaConfig,
))
register_architecture(Architecture(
    stock_model_type="gpt_neox", model_type="wavepos_gpt_neox", source_file="models/gpt_neox.py",
    config_class=gpt_neox.WavePosGPTNeoXConfig, base_class=gpt_neox.WavePosGPTNeoXModel,
    causal_lm_class=gpt_neox.WavePosGPTNeoXForCausalLM, class_map=gpt_neox.CLASS_MAP,
    head_dim=lambda c: c.hidden_size // c.num_attention_heads,
    lora_target_modules=("query_key_value",),
    stock_config_class=gpt_neox.GPTNeoXConfig,
))
register_architecture(Architecture(
    stock_model_type="gpt2", model_type="wavepos_gpt2", source_file="models/gpt2.py",
    config_class=gpt2.WavePosGPT2Config, base_class=gpt2.WavePosGPT2Model,
    causal_lm_class=gpt2.WavePosGPT2LMHeadModel, class_map=gpt2.CLASS_MAP,
    head_dim=lambda c: c.n_embd // c.n_head,
    lora_target_modules=("c_attn",),
    on_apply=gpt2.drop_learned_positions, on_revert=gpt2.restore_learned_positions,
    stock_config_class=gpt2.GPT2Config,
))
