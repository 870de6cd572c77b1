"""GPT-2 with wavelet positions: model type ``wavepos_gpt2``.

The stock model adds a learned absolute embedding ``wpe`` to the token embeddings; the wavepos
model adds nothing there (``wpe`` becomes `NoPositionEmbedding`, so ``n_positions`` no longer
limits the length) and puts the position term into attention. Converting a loaded model keeps
the original ``wpe`` aside, outside the state dict, so that `revert_wavepos` restores it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2LMHeadModel, GPT2Model

from hf_wavepos.models.common import WavePosAttentionMixin, WavePosConfigMixin, WavePosPreTrainedMixin, link_classes

_SAVED_WPE = "_wavepos_saved_wpe"


def gpt2_head_dim(config: Any) -> int:
    """Per-head size of a GPT-2 config: n_embd // n_head."""
    return config.n_embd // config.n_head


class WavePosGPT2Config(WavePosConfigMixin, GPT2Config):
    """`GPT2Config` plus ``wavepos``: the `WavePosConfig` dict (default preset ``oka2025``)."""

    model_type = "wavepos_gpt2"
    wavepos: dict | None = None
    wavepos_head_dim = gpt2_head_dim

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
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
        return self.wavepos_forward(hidden_states, attention_mask, cache, **kwargs)

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, hidden) -> query, key, value, each (B, H, L, D): splits of the fused ``c_attn``."""
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        return tuple(t.view(shape).transpose(1, 2) for t in self.c_attn(hidden_states).split(self.split_size, dim=2))

    def project_output(self, out: torch.Tensor) -> torch.Tensor:
        """(B, L, H * D) -> (B, L, hidden): ``c_proj`` and the residual dropout."""
        return self.resid_dropout(self.c_proj(out))

    def attention_dropout_p(self) -> float:
        return float(self.attn_dropout.p)


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


class WavePosGPT2LMHeadModel(WavePosPreTrainedMixin, GPT2LMHeadModel):
    config_class = WavePosGPT2Config
    _keys_to_ignore_on_load_unexpected = [r"wpe\.weight"]


# Stock class -> wavepos class, applied in place (conversion and construction); construction
# also sets the learned positions aside.
CLASS_MAP: dict[type, type] = link_classes(
    WavePosGPT2Attention, WavePosGPT2Model, WavePosGPT2LMHeadModel, on_init=drop_learned_positions
)
