"""GPT-2 with wavelet positions: model type ``wavepos_gpt2``.

The stock model adds a learned absolute embedding ``wpe`` to the token embeddings; the wavepos
model adds nothing there (``wpe`` becomes `NoPositionEmbedding`, so ``n_positions`` no longer
limits the length) and puts the position term into attention. Converting a loaded model keeps
the original ``wpe`` aside, outside the state dict, so that `revert_wavepos` restores it.
"""

from __future__ import annotations

import torch
from transformers import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2LMHeadModel, GPT2Model

from hf_wavepos.config import resolve_config
from hf_wavepos.models.common import WavePosAttentionMixin, WavePosPreTrainedMixin, cache_offset, swap_classes

_SAVED_WPE = "_wavepos_saved_wpe"


class WavePosGPT2Config(GPT2Config):
    """`GPT2Config` plus ``wavepos``: the `WavePosConfig` dict (default preset ``oka2025``)."""

    model_type = "wavepos_gpt2"
    wavepos: dict | None = None

    def __post_init__(self, **kwargs):
        self.wavepos = resolve_config(self.wavepos if self.wavepos is not None else "oka2025").to_dict()
        super().__post_init__(**kwargs)
        resolve_config(self.wavepos).check_head_dim(self.n_embd // self.n_head)
        if self.add_cross_attention:
            raise ValueError("add_cross_attention=True is not supported by wavepos_gpt2 (decoder-only models).")


class NoPositionEmbedding(torch.nn.Module):
    """Stands in for GPT-2's ``wpe``: returns a 0-d zero, so ``inputs_embeds + wpe(ids)`` is unchanged."""

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        # A 0-d tensor does not promote the embeddings' dtype (bf16 stays bf16).
        return torch.zeros((), device=position_ids.device)


class WavePosGPT2Attention(WavePosAttentionMixin, GPT2Attention):
    """`GPT2Attention` (self-attention only) attending through `wavepos_attend`."""

    def forward(self, hidden_states, cache=None, attention_mask=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if kwargs.get("encoder_hidden_states") is not None:
            raise ValueError("wavepos_gpt2 has no cross-attention.")
        query, key, value = self.c_attn(hidden_states).split(self.split_size, dim=2)
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        query, key, value = (t.view(shape).transpose(1, 2) for t in (query, key, value))  # (B, H, L, D)
        q_offset = cache_offset(cache, self.layer_idx)
        if cache is not None:
            self_cache = getattr(cache, "self_attention_cache", cache)
            key, value = self_cache.update(key, value, self.layer_idx)
        out = self.wavepos_attend(
            query, key, value, attention_mask, q_offset=q_offset, position_ids=kwargs.get("position_ids"),
            scaling=self.scaling, dropout=self.attn_dropout.p,
        )
        out = self.c_proj(out.reshape(*out.shape[:-2], -1).contiguous())
        return self.resid_dropout(out), None


def drop_learned_positions(model: torch.nn.Module) -> None:
    """Replace every GPT-2 ``wpe`` by `NoPositionEmbedding`, keeping the original aside."""
    for module in model.modules():
        if isinstance(module, GPT2Model) and not isinstance(module.wpe, NoPositionEmbedding):
            module.__dict__[_SAVED_WPE] = module.wpe  # not a submodule: stays out of the state dict
            module.wpe = NoPositionEmbedding()


def restore_learned_positions(model: torch.nn.Module) -> None:
    """Undo `drop_learned_positions` (the original ``wpe`` module and its weights)."""
    for module in model.modules():
        if isinstance(module, GPT2Model) and _SAVED_WPE in module.__dict__:
            module.wpe = module.__dict__.pop(_SAVED_WPE)


class WavePosGPT2Model(WavePosPreTrainedMixin, GPT2Model):
    config_class = WavePosGPT2Config
    _keys_to_ignore_on_load_unexpected = [r"wpe\.weight"]

    def __init__(self, config: WavePosGPT2Config):
        super().__init__(config)
        swap_classes(self, CLASS_MAP)
        drop_learned_positions(self)


class WavePosGPT2LMHeadModel(WavePosPreTrainedMixin, GPT2LMHeadModel):
    config_class = WavePosGPT2Config
    _keys_to_ignore_on_load_unexpected = [r"wpe\.weight"]

    def __init__(self, config: WavePosGPT2Config):
        super().__init__(config)
        swap_classes(self, CLASS_MAP)
        drop_learned_positions(self)


# Stock class -> wavepos class, applied in place (conversion and construction).
CLASS_MAP: dict[type, type] = {
    GPT2Attention: WavePosGPT2Attention,
    GPT2Model: WavePosGPT2Model,
    GPT2LMHeadModel: WavePosGPT2LMHeadModel,
}
