"""GPT-2 with wavelet positions: model type ``wavepos_gpt2``.

The stock model adds a learned absolute embedding ``wpe`` to the token embeddings; the wavepos
model adds nothing there (``wpe`` becomes `NoPositionEmbedding`, so ``n_positions`` no longer
limits the length) and puts the position term into attention. Converting a loaded model keeps
the original table inside `NoPositionEmbedding` as a non-persistent buffer: it moves and casts
with the model (``.to()``, ``.half()``, meta, CUDA) but stays out of ``state_dict`` and
``save_pretrained``, and `revert_wavepos` rebuilds ``wpe`` from it where the model now is.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GPT2Config
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2LMHeadModel, GPT2Model

from hf_wavepos.models.common import WavePosAttentionMixin, WavePosConfigMixin, WavePosPreTrainedMixin
from hf_wavepos.models.linking import link_classes

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
    """Stands in for GPT-2's ``wpe``: returns a 0-d zero, so ``inputs_embeds + wpe(ids)`` is unchanged.

    Args:
        stock: the replaced ``wpe`` (a `torch.nn.Embedding`), kept for `revert_wavepos`; None for
            a model built with wavelet positions, which has no learned table.

    Its table is the non-persistent buffer ``stock_weight`` (n_positions, n_embd), or None.
    """

    def __init__(self, stock: torch.nn.Embedding | None = None):
        super().__init__()
        if stock is not None and type(stock) is not torch.nn.Embedding:
            raise ValueError(
                f"GPT-2's wpe is a {type(stock).__name__}, not a torch.nn.Embedding: apply_wavepos keeps the "
                "learned position table for revert_wavepos as an embedding's weight. Convert the model "
                "before wrapping or replacing wpe."
            )
        self.register_buffer("stock_weight", None if stock is None else stock.weight.detach(), persistent=False)
        self.stock_requires_grad = True if stock is None else stock.weight.requires_grad

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        # A 0-d tensor does not promote the embeddings' dtype (bf16 stays bf16).
        return torch.zeros((), device=position_ids.device)

    def stock_embedding(self, model: GPT2Model) -> torch.nn.Embedding:
        """The ``wpe`` to give back to ``model``: the kept table, in its current dtype and device.

        A model built with wavelet positions has none: it gets a new table of
        ``config.n_positions`` rows, initialised as GPT-2 initialises weights (train it before use).
        """
        weight = self.stock_weight
        if weight is None:
            reference = model.get_input_embeddings().weight
            embedding = torch.nn.Embedding(model.config.n_positions, model.config.n_embd,
                                           device=reference.device, dtype=reference.dtype)
            model._init_weights(embedding)
            return embedding
        return torch.nn.Embedding(*weight.shape, _weight=weight, _freeze=not self.stock_requires_grad)


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
    """Replace every GPT-2 ``wpe`` by `NoPositionEmbedding`, which keeps its table (`apply_wavepos`)."""
    for module in model.modules():
        if isinstance(module, GPT2Model) and not isinstance(module.wpe, NoPositionEmbedding):
            module.wpe = NoPositionEmbedding(module.wpe)


def build_without_learned_positions(model: torch.nn.Module) -> None:
    """A model built with wavelet positions: every GPT-2 ``wpe`` becomes an empty `NoPositionEmbedding`."""
    for module in model.modules():
        if isinstance(module, GPT2Model):
            module.wpe = NoPositionEmbedding()


def restore_learned_positions(model: torch.nn.Module) -> None:
    """Undo `drop_learned_positions`: ``wpe`` is an embedding again, with the kept table where it now is."""
    for module in model.modules():
        if isinstance(module, GPT2Model) and isinstance(module.wpe, NoPositionEmbedding):
            module.wpe = module.wpe.stock_embedding(module)


class WavePosGPT2Model(WavePosPreTrainedMixin, GPT2Model):
    config_class = WavePosGPT2Config
    _keys_to_ignore_on_load_unexpected = [r"wpe\.weight"]


class WavePosGPT2LMHeadModel(WavePosPreTrainedMixin, GPT2LMHeadModel):
    config_class = WavePosGPT2Config
    _keys_to_ignore_on_load_unexpected = [r"wpe\.weight"]


# Stock class -> wavepos class, applied in place (conversion and construction); construction
# also removes the learned positions.
CLASS_MAP: dict[type, type] = link_classes(
    WavePosGPT2Attention, WavePosGPT2Model, WavePosGPT2LMHeadModel, on_init=build_without_learned_positions
)
