"""The architecture registry: every per-architecture fact, in-place conversion, Auto registration.

Adding an architecture is one model file (config, attention and model classes, ``CLASS_MAP``:
see `hf_wavepos.models.common`) plus one `Architecture` entry at the end of this file, with the
tiny config its tests build. Training, LoRA, the Hub card and the tests read the entry; none
of them keeps its own list of architectures. Registering a model type twice is refused unless
``overwrite=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

import torch
from transformers import AttentionInterface, AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from hf_wavepos.attention.dispatch import available_backends
from hf_wavepos.config import WavePosConfig, resolve_config
from hf_wavepos.models import gpt2, gpt_neox, llama
from hf_wavepos.models.common import UNSUPPORTED_IMPLEMENTATIONS, swap_classes, unsupported_attention_error
from hf_wavepos.models.remote import auto_map, write_remote_code


@dataclass(frozen=True)
class Architecture:
    """Everything hf_wavepos knows about one stock architecture and its wavepos twin.

    The classes come from ``module``, the architecture's model file: ``model_type`` is its
    config class's, ``class_map`` its ``CLASS_MAP`` (stock -> wavepos).
    """

    stock_model_type: str
    name: str
    """How people write the architecture's name (``GPT-2``), for messages."""
    module: ModuleType
    config_class: type
    base_class: type
    causal_lm_class: type
    stock_config_class: type
    head_dim: Callable[[Any], int]
    """Per-head size of a stock or wavepos config of this architecture."""
    attention_dropout_field: str
    """The config field of the attention dropout (the wavepos backends need it 0 while training)."""
    scratch_config: Callable[..., Any]
    """``scratch_config(vocab_size=, hidden_size=, layers=, heads=, max_positions=, **special_tokens)``:
    the stock config of a model trained from scratch (training recipes, ``model.size``)."""
    tiny_config: Mapping[str, Any]
    """Keyword arguments of ``stock_config_class`` for a tiny model (2 layers): what the tests build."""
    lora_target_modules: tuple[str, ...]
    """PEFT LoRA targets (the attention projections; names shared by the stock and wavepos model)."""
    lora_embeddings: tuple[str, ...]
    """Input embedding module names, trained as ``modules_to_save`` by LongLoRA."""
    lora_norms: tuple[str, ...]
    """Normalisation module names, trained as ``modules_to_save`` by LongLoRA."""
    lora_fan_in_fan_out: bool = False
    """True when the LoRA targets store weights transposed (GPT-2's Conv1D)."""
    query_key_modules: tuple[str, ...] = ()
    """The projections that form queries and keys (fused ones included), where a position method acts:
    what attention transfer trains by default (`hf_wavepos.training.attention_transfer`)."""
    learned_positions_field: str | None = None
    """The config field holding how many positions the stock model's learned absolute embedding
    has (GPT-2: ``n_positions``); None for models without learned positions."""
    on_apply: Callable[[torch.nn.Module], None] | None = None
    """Extra step of `apply_wavepos` after the classes are swapped (GPT-2: ``wpe`` becomes a module
    that adds nothing). Whatever it keeps for `on_revert` must live in the module tree (a submodule,
    or a non-persistent buffer to stay out of checkpoints), so it moves and casts with the model."""
    on_revert: Callable[[torch.nn.Module], None] | None = None
    """Extra step of `revert_wavepos` (GPT-2: restore ``wpe``)."""

    @property
    def model_type(self) -> str:
        """The wavepos model type, e.g. ``wavepos_llama``."""
        return self.config_class.model_type

    @property
    def class_map(self) -> dict[type, type]:
        """Stock class -> wavepos class (the model file's ``CLASS_MAP``)."""
        return self.module.CLASS_MAP

    @property
    def stock_causal_lm_class(self) -> type:
        """The stock ``...ForCausalLM`` / ``...LMHeadModel`` class."""
        return next(stock for stock, new in self.class_map.items() if new is self.causal_lm_class)

    @property
    def source_file(self) -> Path:
        """The model file, bundled into the remote code."""
        return Path(self.module.__file__)

    def auto_map(self) -> dict[str, str]:
        """The ``auto_map`` entry of config.json pointing the Auto classes at the remote code."""
        return auto_map(self.model_type, self.config_class.__name__, self.base_class.__name__,
                        self.causal_lm_class.__name__)

    def write_remote_code(self, folder: str | Path) -> Path:
        """Write the self-contained remote code of this architecture into ``folder``."""
        return write_remote_code(folder, self.source_file, self.model_type)


ARCHITECTURES: dict[str, Architecture] = {}
"""Keyed by both the stock and the wavepos model_type."""


def register_architecture(arch: Architecture, *, overwrite: bool = False) -> None:
    """Register ``arch`` (keyed by its stock and its wavepos model_type) with transformers' Auto classes.

    Raises:
        ValueError: a model type of ``arch`` is already registered (pass ``overwrite=True`` to
            replace it), or the model file's classes do not match the entry.
    """
    taken = [t for t in (arch.stock_model_type, arch.model_type) if t in ARCHITECTURES]
    if taken and not overwrite:
        raise ValueError(f"architecture {taken[0]!r} is already registered; pass overwrite=True to replace it.")
    missing = [c.__name__ for c in (arch.base_class, arch.causal_lm_class) if c not in arch.class_map.values()]
    if missing:
        raise ValueError(f"{', '.join(missing)} not in {arch.module.__name__}.CLASS_MAP; add the stock -> wavepos pair.")
    ARCHITECTURES[arch.stock_model_type] = arch
    ARCHITECTURES[arch.model_type] = arch
    for cls in (arch.base_class, arch.causal_lm_class):
        cls.wavepos_architecture = arch  # what WavePosPreTrainedMixin.save_pretrained reads
    AutoConfig.register(arch.model_type, arch.config_class, exist_ok=True)
    AutoModel.register(arch.config_class, arch.base_class, exist_ok=True)
    AutoModelForCausalLM.register(arch.config_class, arch.causal_lm_class, exist_ok=True)


def registered_architectures() -> list[Architecture]:
    """Every registered `Architecture` once, in registration order."""
    return list({id(a): a for a in ARCHITECTURES.values()}.values())


def is_wavepos_model_type(model_type: str) -> bool:
    """True for a registered wavepos model type (``wavepos_llama``, ...), False otherwise."""
    arch = ARCHITECTURES.get(model_type)
    return arch is not None and arch.model_type == model_type


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
    replaced by a module that adds nothing and keeps the table as a non-persistent buffer: it
    follows ``.to()`` / ``.half()`` but stays out of ``state_dict``), and the config becomes the wavepos config type with a ``wavepos`` section, so
    ``save_pretrained`` writes a wavepos checkpoint. Applying to an already converted model
    replaces its position config.

    Args:
        model: a model of a registered architecture (``...ForCausalLM`` or the base model);
            `supported_model_types` lists them.
        config_or_preset: a `WavePosConfig`, a preset name (``oka2025``, ``oka2025-4k``, ``long``,
            ``alibi``, ``nope``), a ``wavepos`` dict, or a dict with a ``preset`` key plus fields to
            override (``{"preset": "long", "num_scales": 8}``); see `hf_wavepos.config.resolve_config`.

    Returns:
        ``model`` itself.

    Raises:
        ValueError: an unknown preset or field, an invalid value, a position table that does not
            fit the model's head size, or an unsupported attention implementation.
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

    A model converted by `apply_wavepos` gives bit-identical outputs to before its conversion,
    in the dtype and on the device it has now (casts and moves after conversion carry the kept
    state). A GPT-2 model built with wavelet positions has no learned table to give back: its
    ``wpe`` is initialised as GPT-2 initialises new weights.
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
    """PEFT LoRA target module names for a wavepos (or stock) model or model_type
    (`Architecture.lora_target_modules`)."""
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


# ---------------------------------------------------------------------------- the architectures
def _llama_scratch(*, vocab_size, hidden_size, layers, heads, max_positions, **special):
    ffn = 256 * round(8 * hidden_size / 3 / 256) if hidden_size >= 256 else 2 * hidden_size  # SwiGLU: ~8/3 x hidden
    return llama.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions, **special,
    )


def _gpt_neox_scratch(*, vocab_size, hidden_size, layers, heads, max_positions, **special):
    return gpt_neox.GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=max_positions, hidden_dropout=0.0,
        attention_dropout=0.0, **special,
    )


def _gpt2_scratch(*, vocab_size, hidden_size, layers, heads, max_positions, **special):
    return gpt2.GPT2Config(
        vocab_size=vocab_size, n_embd=hidden_size, n_layer=layers, n_head=heads, n_inner=4 * hidden_size,
        n_positions=max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special,
    )


register_architecture(Architecture(
    stock_model_type="llama", name="Llama", module=llama, config_class=llama.WavePosLlamaConfig,
    base_class=llama.WavePosLlamaModel, causal_lm_class=llama.WavePosLlamaForCausalLM,
    stock_config_class=llama.LlamaConfig, head_dim=llama.llama_head_dim,
    attention_dropout_field="attention_dropout", scratch_config=_llama_scratch,
    tiny_config=dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=96, pad_token_id=0),
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), lora_embeddings=("embed_tokens",),
    lora_norms=("input_layernorm", "post_attention_layernorm", "norm"), query_key_modules=("q_proj", "k_proj"),
))
register_architecture(Architecture(
    stock_model_type="gpt_neox", name="GPT-NeoX", module=gpt_neox, config_class=gpt_neox.WavePosGPTNeoXConfig,
    base_class=gpt_neox.WavePosGPTNeoXModel, causal_lm_class=gpt_neox.WavePosGPTNeoXForCausalLM,
    stock_config_class=gpt_neox.GPTNeoXConfig, head_dim=gpt_neox.gpt_neox_head_dim,
    attention_dropout_field="attention_dropout", scratch_config=_gpt_neox_scratch,
    tiny_config=dict(vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=96, rotary_pct=0.25, attention_dropout=0.0, hidden_dropout=0.0,
                     pad_token_id=0),
    lora_target_modules=("query_key_value",), lora_embeddings=("embed_in",),
    lora_norms=("input_layernorm", "post_attention_layernorm", "final_layer_norm"),
    query_key_modules=("query_key_value",),
))
register_architecture(Architecture(
    stock_model_type="gpt2", name="GPT-2", module=gpt2, config_class=gpt2.WavePosGPT2Config,
    base_class=gpt2.WavePosGPT2Model, causal_lm_class=gpt2.WavePosGPT2LMHeadModel,
    stock_config_class=gpt2.GPT2Config, head_dim=gpt2.gpt2_head_dim,
    attention_dropout_field="attn_pdrop", scratch_config=_gpt2_scratch,
    tiny_config=dict(vocab_size=96, n_embd=64, n_layer=2, n_head=4, n_positions=32, attn_pdrop=0.0,
                     resid_pdrop=0.0, embd_pdrop=0.0, pad_token_id=0),
    lora_target_modules=("c_attn",), lora_embeddings=("wte",), lora_norms=("ln_1", "ln_2", "ln_f"),
    lora_fan_in_fan_out=True, learned_positions_field="n_positions", query_key_modules=("c_attn",),
    on_apply=gpt2.drop_learned_positions, on_revert=gpt2.restore_learned_positions,
))
