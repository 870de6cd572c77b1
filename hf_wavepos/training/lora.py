"""LoRA through PEFT, with LongLoRA's option to also train the embeddings and the norms.

The module names come from the architecture registry (`hf_wavepos.models.registry.Architecture`):
``lora_target_modules`` (the attention projections: the wavepos attention keeps the stock
parameter names, so the same names serve stock and converted models), ``lora_embeddings`` and
``lora_norms`` (LongLoRA's extra trainables) and ``lora_fan_in_fan_out`` (GPT-2's Conv1D).

Embeddings and norms are trained as PEFT ``modules_to_save``: trained copies saved inside the
adapter and swapped in by ``merge_and_unload``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hf_wavepos.models.registry import ARCHITECTURES, supported_model_types
from hf_wavepos.training.experiment_config import LoraSection


def lora_config(section: LoraSection, model_type: str, *, tied_embeddings: bool = False) -> Any:
    """The `peft.LoraConfig` for a model of ``model_type``.

    Args:
        section: the ``lora`` section of the experiment.
        model_type: e.g. ``"wavepos_llama"`` or ``"llama"``.
        tied_embeddings: the model ties input and output embeddings.

    Raises:
        ValueError: an unregistered architecture and no explicit ``lora.target_modules``, or
            trained embeddings on a model with tied embeddings.
    """
    from peft import LoraConfig

    arch = ARCHITECTURES.get(model_type)
    if arch is None and (section.target_modules is None or section.train_embeddings or section.train_norms):
        raise ValueError(
            f"no LoRA layout for model type {model_type!r} (known: {', '.join(supported_model_types())}); set "
            "lora.target_modules and leave lora.train_embeddings / lora.train_norms off."
        )
    targets = list(section.target_modules if section.target_modules is not None else arch.lora_target_modules)
    if section.train_embeddings and tied_embeddings:
        raise ValueError(
            f"lora.train_embeddings with tied input/output embeddings ({model_type}, tie_word_embeddings=true) is "
            "not supported: PEFT would train a copy of the input embedding while the output head stays on the frozen "
            "original, and the merged model would differ from the adapter model. Set lora.train_embeddings false."
        )
    to_save = [*(arch.lora_embeddings if section.train_embeddings else ()), *(arch.lora_norms if section.train_norms else ())]
    return LoraConfig(
        task_type="CAUSAL_LM", r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
        target_modules=targets, modules_to_save=to_save or None,
        fan_in_fan_out=bool(arch and arch.lora_fan_in_fan_out),
    )


def wrap_lora(model: torch.nn.Module, section: LoraSection) -> torch.nn.Module:
    """Freeze ``model`` and add LoRA adapters (plus trainable embeddings / norms if asked).

    Returns:
        A `peft.PeftModel`; only adapter (and ``modules_to_save``) parameters require grad.
    """
    from peft import get_peft_model

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    return get_peft_model(model, lora_config(section, model.config.model_type, tied_embeddings=tied))


def merge_adapter(base: torch.nn.Module, adapter_dir: str | Path) -> torch.nn.Module:
    """Load a saved adapter onto ``base`` and merge it into the weights.

    Args:
        base: a freshly built base model (same architecture and position method as in training).
        adapter_dir: folder written by ``PeftModel.save_pretrained``.

    Returns:
        The plain transformers model with LoRA deltas added and trained embeddings / norms in place.
    """
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
