"""GPT-NeoX (Pythia) with wavelet positions: model type ``wavepos_gpt_neox``.

The stock model rotates the first ``rotary_ndims`` dimensions of every head (partial rotary);
the wavepos model rotates none and adds the position term over the whole head instead. q, k and
v come from one fused projection (``query_key_value``), so they are non-contiguous views.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GPTNeoXConfig
from transformers.models.gpt_neox.modeling_gpt_neox import (
    GPTNeoXAttention,
    GPTNeoXForCausalLM,
    GPTNeoXModel,
)

from hf_wavepos.models.common import WavePosAttentionMixin, WavePosConfigMixin, WavePosPreTrainedMixin
from hf_wavepos.models.linking import link_classes


def gpt_neox_head_dim(config: Any) -> int:
    """Per-head size of a GPT-NeoX config: hidden_size // num_attention_heads."""
    return config.hidden_size // config.num_attention_heads


class WavePosGPTNeoXConfig(WavePosConfigMixin, GPTNeoXConfig):
    """`GPTNeoXConfig` plus ``wavepos``: the `WavePosConfig` dict (default preset ``oka2025``)."""

    model_type = "wavepos_gpt_neox"
    wavepos: dict | None = None
    wavepos_head_dim = gpt_neox_head_dim


class WavePosGPTNeoXAttention(WavePosAttentionMixin, GPTNeoXAttention):
    """`GPTNeoXAttention` without rotary embedding, attending through `wavepos_attend`."""

    def forward(self, hidden_states, attention_mask=None, layer_past=None, position_embeddings=None,
                cache=None, past_key_values=None, **kwargs):
        cache = next((c for c in (layer_past, cache, past_key_values) if c is not None), None)
        return self.wavepos_forward(hidden_states, attention_mask, cache, **kwargs)

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, hidden) -> query, key, value, each (B, H, L, D): chunks of the fused projection."""
        shape = (*hidden_states.shape[:-1], -1, 3 * self.head_size)
        qkv = self.query_key_value(hidden_states).view(shape).transpose(1, 2)
        return qkv.chunk(3, dim=-1)

    def project_output(self, out: torch.Tensor) -> torch.Tensor:
        """(B, L, H * D) -> (B, L, hidden)."""
        return self.dense(out)


class WavePosGPTNeoXModel(WavePosPreTrainedMixin, GPTNeoXModel):
    config_class = WavePosGPTNeoXConfig


class WavePosGPTNeoXForCausalLM(WavePosPreTrainedMixin, GPTNeoXForCausalLM):
    config_class = WavePosGPTNeoXConfig


# Stock class -> wavepos class, applied in place (conversion and construction).
CLASS_MAP: dict[type, type] = link_classes(WavePosGPTNeoXAttention, WavePosGPTNeoXModel, WavePosGPTNeoXForCausalLM)
