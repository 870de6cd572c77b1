"""GPT-NeoX (Pythia) with wavelet positions: model type ``wavepos_gpt_neox``.

The stock model rotates the first ``rotary_ndims`` dimensions of every head (partial rotary);
the wavepos model rotates none and adds the position term over the whole head instead.
"""

from __future__ import annotations

from transformers import GPTNeoXConfig
from transformers.models.gpt_neox.modeling_gpt_neox import (
    GPTNeoXAttention,
    GPTNeoXForCausalLM,
    GPTNeoXModel,
)

from hf_wavepos.config import resolve_config
from hf_wavepos.models.common import WavePosAttentionMixin, WavePosPreTrainedMixin, cache_offset, swap_classes


class WavePosGPTNeoXConfig(GPTNeoXConfig):
    """`GPTNeoXConfig` plus ``wavepos``: the `WavePosConfig` dict (default preset ``oka2025``)."""

    model_type = "wavepos_gpt_neox"
    wavepos: dict | None = None

    def __post_init__(self, **kwargs):
        self.wavepos = resolve_config(self.wavepos if self.wavepos is not None else "oka2025").to_dict()
        super().__post_init__(**kwargs)
        resolve_config(self.wavepos).check_head_dim(self.hidden_size // self.num_attention_heads)


class WavePosGPTNeoXAttention(WavePosAttentionMixin, GPTNeoXAttention):
    """`GPTNeoXAttention` without rotary embedding, attending through `wavepos_attend`."""

    def forward(self, hidden_states, attention_mask=None, layer_past=None, position_embeddings=None,
                cache=None, past_key_values=None, **kwargs):
        cache = next((c for c in (layer_past, cache, past_key_values) if c is not None), None)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, 3 * self.head_size)
        qkv = self.query_key_value(hidden_states).view(hidden_shape).transpose(1, 2)
        query, key, value = qkv.chunk(3, dim=-1)  # each (B, H, L, D)
        q_offset = cache_offset(cache, self.layer_idx)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        out = self.wavepos_attend(
            query, key, value, attention_mask, q_offset=q_offset, position_ids=kwargs.get("position_ids"),
            scaling=self.scaling, dropout=self.attention_dropout,
        )
        return self.dense(out.reshape(*input_shape, -1).contiguous()), None


class WavePosGPTNeoXModel(WavePosPreTrainedMixin, GPTNeoXModel):
    config_class = WavePosGPTNeoXConfig

    def __init__(self, config: WavePosGPTNeoXConfig):
        super().__init__(config)
        swap_classes(self, CLASS_MAP)


class WavePosGPTNeoXForCausalLM(WavePosPreTrainedMixin, GPTNeoXForCausalLM):
    config_class = WavePosGPTNeoXConfig

    def __init__(self, config: WavePosGPTNeoXConfig):
        super().__init__(config)
        swap_classes(self, CLASS_MAP)


# Stock class -> wavepos class, applied in place (conversion and construction).
CLASS_MAP: dict[type, type] = {
    GPTNeoXAttention: WavePosGPTNeoXAttention,
    GPTNeoXModel: WavePosGPTNeoXModel,
    GPTNeoXForCausalLM: WavePosGPTNeoXForCausalLM,
}
