"""Linking an architecture's wavepos classes to the stock ones they replace.

`link_classes` builds an architecture's stock -> wavepos ``CLASS_MAP`` and gives the model
classes what transformers keys by class: the base model's forward (`wavepos_model_forward`:
output flags checked, packed documents decided once), the output recorder entries
(`record_outputs_of`) and the checkpoint key renaming (`share_checkpoint_format`). Part of the
self-contained remote code, bundled right after `hf_wavepos.models.common`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from transformers import GenerationMixin

from hf_wavepos.models.common import DOCUMENT_IDS, WavePosPreTrainedMixin
from hf_wavepos.positions import packed_document_ids


def link_classes(*classes: type, on_init: Any = None) -> dict[type, type]:
    """An architecture's ``CLASS_MAP``: stock class -> wavepos class, for wavepos ``classes`` whose
    last base is the stock class they replace.

    Also gives the wavepos model classes (`WavePosPreTrainedMixin`) the map itself and the
    architecture's ``on_init(model)`` hook, run after construction.
    """
    class_map = {cls.__bases__[-1]: cls for cls in classes}
    for cls in classes:
        if issubclass(cls, WavePosPreTrainedMixin):
            cls.wavepos_class_map = class_map
            cls.wavepos_on_init = on_init
            if not issubclass(cls, GenerationMixin) and "forward" not in cls.__dict__:  # the base model
                cls.forward = wavepos_model_forward(cls.__bases__[-1].forward)
            record_outputs_of(cls)
            share_checkpoint_format(cls, cls.__bases__[-1])
    return class_map


def share_checkpoint_format(cls: type, stock: type) -> None:
    """Let ``cls`` read and write checkpoints with the keys ``stock`` uses.

    transformers renames some keys between checkpoint and module, per class name (GPT-NeoX's
    ``embed_out`` is the module ``lm_head``); the wavepos class gets the stock class's renaming,
    so a converted model saves the stock key names and loads both. (A no-op where transformers
    has no such mapping.)
    """
    try:
        from transformers.conversion_mapping import (
            get_checkpoint_conversion_mapping,
            register_checkpoint_conversion_mapping,
        )
    except ImportError:
        return
    mapping = get_checkpoint_conversion_mapping(stock.__name__)
    if mapping is not None:
        register_checkpoint_conversion_mapping(cls.__name__, mapping, overwrite=True)


def record_outputs_of(cls: type) -> None:
    """Let transformers record ``output_hidden_states`` / ``output_attentions`` for ``cls``.

    transformers keeps the recordable outputs of each model class in a registry keyed by the
    class's name, filled when a model of that class is constructed; a loaded model that
    `apply_wavepos` gives a wavepos class was never constructed as one, so without this entry
    both flags return None. (A plain no-op where transformers has no such registry.)
    """
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:
        return
    dict.__setitem__(_CAN_RECORD_REGISTRY, str(cls), cls._can_record_outputs)


ATTENTIONS_IMPLEMENTATIONS = ("eager", "wavepos_reference")
"""The ``attn_implementation`` values whose backend (``reference``) returns attention probabilities."""


def check_output_attentions(config: Any, requested: bool | None) -> None:
    """Raise unless the model can return what ``output_attentions`` asks for.

    Args:
        config: the model config (its ``_attn_implementation``; ``output_attentions`` when
            ``requested`` is None, as transformers reads it).
        requested: the ``output_attentions`` argument of the call, or None.

    Raises:
        ValueError: attentions are requested and the backend is not the reference one: only
            ``attn_implementation="eager"`` materialises the probabilities.
    """
    if requested is None:
        requested = getattr(config, "output_attentions", False)
    implementation = getattr(config, "_attn_implementation", None) or "sdpa"
    if requested and implementation not in ATTENTIONS_IMPLEMENTATIONS:
        raise ValueError(
            f'output_attentions=True needs attn_implementation="eager" (the reference backend, the only one '
            f"that materialises the attention probabilities); this model uses attn_implementation="
            f'"{implementation}". Load it with attn_implementation="eager" or call '
            'model.set_attn_implementation("eager") first.'
        )


def wavepos_model_forward(stock_forward: Callable) -> Callable:
    """The forward of a wavepos base model: ``stock_forward`` (same signature), after two
    decisions that need the caller's own arguments.

    1. ``output_attentions=True`` is refused before any compute where the backend cannot
       return probabilities (`check_output_attentions`).
    2. Packed documents are read from ``position_ids`` only when the caller gives neither a
       padding mask nor a cache (`hf_wavepos.positions.packed_document_ids`, transformers'
       rule); their ids reach every attention module as the keyword `DOCUMENT_IDS`. Only here
       are the caller's mask and cache visible: the attention modules see the 4-D mask
       transformers builds and the cache the stock forward creates.
    """
    names = list(inspect.signature(stock_forward).parameters)[1:]  # after self
    index = {name: i for i, name in enumerate(names)}

    def argument(args: tuple, kwargs: dict, name: str) -> Any:
        if name in kwargs:
            return kwargs[name]
        i = index.get(name)
        return args[i] if i is not None and i < len(args) else None

    @functools.wraps(stock_forward)
    def forward(self, *args, **kwargs):
        check_output_attentions(self.config, kwargs.get("output_attentions"))
        cache = argument(args, kwargs, "cache")
        cache = cache if cache is not None else argument(args, kwargs, "past_key_values")
        inputs = argument(args, kwargs, "input_ids")
        inputs = inputs if inputs is not None else argument(args, kwargs, "inputs_embeds")
        batch = None if inputs is None else inputs.shape[0]
        kwargs[DOCUMENT_IDS] = packed_document_ids(
            argument(args, kwargs, "position_ids"), argument(args, kwargs, "attention_mask"), cache, batch
        )
        return stock_forward(self, *args, **kwargs)

    return forward
