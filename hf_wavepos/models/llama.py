"""Llama with wavelet positions: model type ``wavepos_llama``.

Only the attention step differs from the stock model: q and k are not rotated, and the
position term comes from the configured method (`hf_wavepos.positions`). The rotary module
stays in place (unused) so that converting and reverting a loaded model is exact.
"""

from __future__ import annotations

from typing import Any

from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaForCausalLM, LlamaModel

from hf_wavepos.models.common import SeparateProjectionsAttention, WavePosConfigMixin, WavePosPreTrainedMixin
from hf_wavepos.models.linking import link_classes


def llama_head_dim(config: Any) -> int:
    """Per-head size of a Llama config: ``head_dim`` when set, else hidden_size // num_attention_heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class WavePosLlamaConfig(WavePosConfigMixin, LlamaConfig):
    """`LlamaConfig` plus ``wavepos``: the `WavePosConfig` dict (default preset ``oka2025``)."""

    model_type = "wavepos_llama"
    wavepos: dict | None = None
    wavepos_head_dim = llama_head_dim


class WavePosLlamaAttention(SeparateProjectionsAttention, LlamaAttention):
    """`LlamaAttention` without RoPE, attending through `wavepos_attend` (same parameters)."""


class WavePosLlamaModel(WavePosPreTrainedMixin, LlamaModel):
    config_class = WavePosLlamaConfig


class WavePosLlamaForCausalLM(WavePosPreTrainedMixin, LlamaForCausalLM):
    config_class = WavePosLlamaConfig


# Stock class -> wavepos class, applied in place (conversion and construction).
CLASS_MAP: dict[type, type] = link_classes(WavePosLlamaAttention, WavePosLlamaModel, WavePosLlamaForCausalLM)
