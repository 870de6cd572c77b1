"""Llama with wavelet positions: model type ``wavepos_llama``.

Only the attention step differs from the stock model: q and k are not rotated, and the
position term comes from the configured method (`hf_wavepos.positions`). The rotary module
stays in place (unused) so that converting and reverting a loaded model is exact.
"""

from __future__ import annotations

from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaForCausalLM, LlamaModel

from hf_wavepos.config import resolve_config
from hf_wavepos.models.common import WavePosAttentionMixin, WavePosPreTrainedMixin, cache_offset, swap_classes


class WavePosLlamaConfig(LlamaConfig):
    """`LlamaConfig` plus ``wavepos``: the `WavePosConfig` dict (default preset ``oka2025``)."""

    model_type = "wavepos_llama"
    wavepos: dict | None = None

    def __post_init__(self, **kwargs):
        self.wavepos = resolve_config(self.wavepos if self.wavepos is not None else "oka2025").to_dict()
        super().__post_init__(**kwargs)
        resolve_config(self.wavepos).check_head_dim(self.head_dim)


class WavePosLlamaAttention(WavePosAttentionMixin, LlamaAttention):
    """`LlamaAttention` without RoPE, attending through `wavepos_attend` (same parameters)."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, H, L, D)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)  # (B, Hkv, L, D)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        q_offset = cache_offset(cache, self.layer_idx)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        out = self.wavepos_attend(
            query, key, value, attention_mask, q_offset=q_offset, position_ids=kwargs.get("position_ids"),
            scaling=self.scaling, dropout=self.attention_dropout,
        )
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), None


class WavePosLlamaModel(WavePosPreTrainedMixin, LlamaModel):
    config_class = WavePosLlamaConfig

    def __init__(self, config: WavePosLlamaConfig):
        super().__init__(config)
        swap_classes(self, CLASS_MAP)


class WavePosLlamaForCausalLM(WavePosPreTrainedMixin, LlamaForCausalLM):
    config_class = WavePosLlamaConfig

    def __init__(self, config: WavePosLlamaConfig):
        super().__init__(config)
        swap_classes(self, CLASS_MAP)


# Stock class -> wavepos class, applied in place (conversion and construction).
CLASS_MAP: dict[type, type] = {
    LlamaAttention: WavePosLlamaAttention,
    LlamaModel: WavePosLlamaModel,
    LlamaForCausalLM: WavePosLlamaForCausalLM,
}

