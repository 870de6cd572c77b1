"""What every wavepos architecture shares: config handling, the attention step, model classes.

An architecture file (`hf_wavepos.models.llama`, ...) subclasses the stock classes with the
mixins below and writes only what differs:

- the config class: `WavePosConfigMixin` + the stock config, ``model_type`` and the head-size rule;
- the attention class: `WavePosAttentionMixin` + the stock attention, with ``forward`` (the stock
  signature), ``project_qkv`` (the stock projections, no rotary embedding) and ``project_output``;
  Llama-style modules (q/k/v/o_proj) take all three from `SeparateProjectionsAttention`;
- the model classes: `WavePosPreTrainedMixin` + the stock model classes, linked to the
  stock -> wavepos ``CLASS_MAP`` by `hf_wavepos.models.linking.link_classes`.

`WavePosAttentionMixin.wavepos_forward` reads the cache offset *before* updating the cache and
hands the rest to `WavePosAttentionMixin.wavepos_attend`. What only the model's inputs tell (is
there a padding mask or a cache, so are the rows packed documents?) is decided once by the base
model's forward (`hf_wavepos.models.linking.wavepos_model_forward`) and reaches the attention modules as the keyword
``wavepos_document_ids``. Parameter names are unchanged, so
checkpoints, PEFT targets and tensor-parallel plans stay valid. This file is also part of the
self-contained remote code (`hf_wavepos.models.remote`): it imports nothing above the models layer.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_wavepos.attention.dispatch import (
    available_backends,
    default_backend,
    wavepos_attention,
    wavepos_attention_with_probabilities,
)
from hf_wavepos.basis import log_n_scale
from hf_wavepos.config import WavePosConfig, resolve_config
from hf_wavepos.positions import packed_document_ids, positional_inputs

DOCUMENT_IDS = "wavepos_document_ids"
"""Keyword that carries the packed documents' ids (B, L), or None, from the base model to its attention."""

UNSUPPORTED_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3", "flash_attention_4", "paged|flash_attention_2")


def unsupported_attention_error(name: str) -> ValueError:
    """The error for attention implementations that cannot add the wavelet term."""
    return ValueError(
        f"attn_implementation={name!r} cannot be used with wavelet positions: flash-attention kernels take "
        "no relative positional term. Use 'sdpa' (default: hf_wavepos's fastest backend for the device), "
        "'eager' (the exact reference), 'flex_attention', or 'wavepos_<backend>' with a backend from "
        f"{', '.join(available_backends())}."
    )


def backend_for(attn_implementation: str | None, device: torch.device) -> str:
    """Map transformers' ``attn_implementation`` to a wavepos attention backend name.

    eager -> reference; sdpa (or None) -> the default backend of the device; flex_attention ->
    flex (when registered); ``wavepos_<name>`` -> that backend. Flash-attention names raise.
    """
    name = attn_implementation or "sdpa"
    if name == "eager":
        return "reference"
    if name == "sdpa":
        return default_backend(device)
    if name.startswith("wavepos_"):
        return name[len("wavepos_"):]
    if name == "flex_attention":
        if "flex" in available_backends(device):
            return "flex"
        raise ValueError(
            f"attn_implementation='flex_attention' needs hf_wavepos's flex backend, which is not available on "
            f"{device}; use 'sdpa' or 'eager'."
        )
    if "flash" in name:
        raise unsupported_attention_error(name)
    raise ValueError(
        f"attn_implementation={name!r} is not supported by wavepos models; use 'sdpa', 'eager', "
        "'flex_attention' or 'wavepos_<backend>'."
    )


_PARSED_SECTIONS: dict[tuple, WavePosConfig] = {}


def wavepos_config_of(config: Any) -> WavePosConfig:
    """The `WavePosConfig` stored in a transformers config's ``wavepos`` section.

    Parsed once per distinct section and memoised in a plain dict, which ``torch.compile`` reads
    as a constant (it cannot build the dataclass inside a graph).
    """
    section = getattr(config, "wavepos", None)
    if section is None:
        raise ValueError(f"{type(config).__name__} has no 'wavepos' section; convert with apply_wavepos first.")
    if isinstance(section, WavePosConfig):
        return section
    key = tuple(sorted((name, tuple(value) if isinstance(value, list) else value) for name, value in section.items()))
    parsed = _PARSED_SECTIONS.get(key)
    if parsed is None:
        parsed = _PARSED_SECTIONS[key] = WavePosConfig.from_dict(section)
    return parsed


def visibility_from_hf_mask(attention_mask: Any, q_len: int, k_len: int) -> torch.Tensor | None:
    """Turn the mask transformers hands to attention modules into a bool (B|1, 1, Lq, Lk) or None.

    transformers builds None (plain causal: the compact path), a bool mask (sdpa: True = attend)
    or an additive float mask (eager: 0 = attend, a very negative value = masked).
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, torch.Tensor):
        raise ValueError(
            f"wavepos attention got a {type(attention_mask).__name__} mask; with attn_implementation="
            "'flex_attention' hf_wavepos's flex backend must be installed. Use 'sdpa' or 'eager' instead."
        )
    if attention_mask.dim() != 4 or attention_mask.shape[1] != 1:
        raise ValueError(
            f"expected a (batch, 1, q_len, k_len) attention mask from transformers, got shape {tuple(attention_mask.shape)}."
        )
    mask = attention_mask[:, :, -q_len:, :k_len]
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    return mask


def cache_offset(cache: Any, layer_idx: int) -> int | torch.Tensor:
    """Number of tokens already cached for this layer: the position of the first new query.

    Read before ``cache.update``; StaticCache returns a live tensor that update mutates, so the
    value is taken now: a Python int, or, while ``torch.compile`` traces, a copy of that tensor
    (reading it on the host would cost a graph break and a new graph per decoding step).
    """
    if cache is None:
        return 0
    self_attention = getattr(cache, "self_attention_cache", cache)  # EncoderDecoderCache (GPT-2)
    length = self_attention.get_seq_length(layer_idx)
    if not isinstance(length, torch.Tensor):
        return int(length)
    return length.clone() if torch.compiler.is_compiling() else int(length.item())


class WavePosConfigMixin:
    """The ``wavepos`` section of every wavepos config class (put it first in the bases).

    The subclass declares ``model_type``, the field ``wavepos: dict | None = None`` and
    ``wavepos_head_dim(self)``, its architecture's head size rule. The section defaults to the
    preset ``oka2025`` and is validated against that head size.
    """

    def __post_init__(self, **kwargs):
        self.wavepos = resolve_config(self.wavepos if self.wavepos is not None else "oka2025").to_dict()
        super().__post_init__(**kwargs)
        resolve_config(self.wavepos).check_head_dim(self.wavepos_head_dim())


class WavePosAttentionMixin:
    """Adds `wavepos_forward` / `wavepos_attend` to a stock attention module (which provides
    ``self.config``, ``self.layer_idx`` and ``self.scaling``).

    The subclass provides ``project_qkv(hidden_states) -> (query, key, value)`` and
    ``project_output(out) -> hidden``, and may override `attention_dropout_p`.
    """

    def attention_dropout_p(self) -> float:
        """The stock module's attention dropout probability (``self.attention_dropout``)."""
        return float(self.attention_dropout)

    def wavepos_forward(self, hidden_states: torch.Tensor, attention_mask: Any, cache: Any,
                        **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention step of a wavepos module: (B, L, hidden) -> ((B, L, hidden), probs).

        Projects q, k, v as the stock module does but without rotary embedding, reads the cache
        offset before the cache update (`cache_offset`), attends with `wavepos_attend` and
        applies the output projection. ``kwargs`` are the keywords transformers hands the stock
        attention module; ``position_ids`` and `DOCUMENT_IDS` are read from them. ``probs`` is
        what the stock module returns second: the attention probabilities (B, H, L, Lk) with
        ``attn_implementation="eager"``, None otherwise.
        """
        position_ids = kwargs.get("position_ids")
        document_ids = kwargs.get(DOCUMENT_IDS)
        query, key, value = self.project_qkv(hidden_states)  # (B, H, L, D), (B, Hkv, L, D) x 2
        q_offset = cache_offset(cache, self.layer_idx)
        if cache is not None:
            self_attention = getattr(cache, "self_attention_cache", cache)  # EncoderDecoderCache (GPT-2)
            key, value = self_attention.update(key, value, self.layer_idx)
        out, probs = self.wavepos_attend(
            query, key, value, attention_mask, q_offset=q_offset, position_ids=position_ids,
            document_ids=document_ids, scaling=self.scaling, dropout=self.attention_dropout_p(),
        )  # (B, L, H, D), (B, H, L, Lk) or None
        return self.project_output(out.reshape(*hidden_states.shape[:-1], -1).contiguous()), probs

    def wavepos_attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        *,
        q_offset: int | torch.Tensor,
        position_ids: torch.Tensor | None,
        document_ids: torch.Tensor | None = None,
        scaling: float,
        dropout: float,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention with the configured position method (Eq. 10 for wavelets).

        Args:
            query: (B, H, Lq, D) projected queries, no rotary embedding.
            key, value: (B, Hkv, Lk, D) after the cache update.
            attention_mask: what transformers passes the attention module (None or 4-D).
            q_offset: cached tokens before the first query (`cache_offset`: an int, or a 0-d
                tensor while torch.compile traces a static cache).
            position_ids: (B|1, Lq) positions of the queries in their sequences (log-n scaling).
            document_ids: (B, Lk) ids of packed documents (`hf_wavepos.positions.packed_document_ids`,
                decided by the base model), which never attend across a boundary; or None.
            scaling: the stock module's logit scale.
            dropout: the stock module's attention dropout probability (must be 0 while training).

        Returns:
            (B, Lq, H, D), the layout transformers' attention functions return, and the attention
            probabilities (B, H, Lq, Lk) when the backend is ``reference`` (``attn_implementation=
            "eager"``, as transformers' eager attention returns them), else None.
        """
        if dropout > 0 and self.training:
            raise ValueError(
                f"attention dropout ({dropout}) is not supported by wavepos attention backends; set the "
                "model config's attention dropout to 0 (Llama/GPT-NeoX: attention_dropout, GPT-2: attn_pdrop)."
            )
        wp = wavepos_config_of(self.config)
        B, H, Lq, D = query.shape
        if wp.log_n_scaling:
            if position_ids is None:
                position_ids = (torch.arange(Lq, device=query.device) + q_offset)[None]
            scale = log_n_scale(position_ids, wp.train_length).to(query.dtype)  # (B|1, Lq)
            query = query * scale[:, None, :, None]
        # Sized by the key length, a shape (a static cache's size), never by the offset: every
        # distance is below it, and decoding steps share one table.
        table, slopes = positional_inputs(wp, D, H, key.shape[2], query.device, query.dtype)
        attn_mask = visibility_from_hf_mask(attention_mask, Lq, key.shape[2])
        backend = backend_for(getattr(self.config, "_attn_implementation", None), query.device)
        contract = dict(scaling=scaling, q_offset=q_offset, document_ids=document_ids, attn_mask=attn_mask,
                        alibi_slopes=slopes)
        if backend == "reference":
            out, probs = wavepos_attention_with_probabilities(query, key, value, table, **contract)
        else:
            out, probs = wavepos_attention(query, key, value, table, backend=backend, **contract), None
        return out.transpose(1, 2), probs


class SeparateProjectionsAttention(WavePosAttentionMixin):
    """Wavepos attention for Llama-style modules: ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``
    with heads of ``self.head_dim`` (Llama, and the many architectures built like it)."""

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        return self.wavepos_forward(hidden_states, attention_mask, cache, **kwargs)

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, hidden) -> query (B, H, L, D), key and value (B, Hkv, L, D)."""
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        return tuple(proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))

    def project_output(self, out: torch.Tensor) -> torch.Tensor:
        """(B, L, H * D) -> (B, L, hidden)."""
        return self.o_proj(out)


class WavePosPreTrainedMixin:
    """Model-level behaviour shared by every wavepos model class (put it first in the bases).

    Construction swaps the stock submodules for their wavepos classes (``wavepos_class_map``,
    set by `link_classes`) and then runs ``wavepos_on_init`` if the architecture has one.
    """

    wavepos_class_map: dict[type, type] = {}
    wavepos_on_init: Any = None
    wavepos_architecture: Any = None  # installed by hf_wavepos.models.registry; None in remote code

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        swap_classes(self, self.wavepos_class_map)
        if type(self).wavepos_on_init is not None:
            type(self).wavepos_on_init(self)

    def _check_and_adjust_attn_implementation(self, attn_implementation, *args, **kwargs):
        if isinstance(attn_implementation, str) and (
            attn_implementation in UNSUPPORTED_IMPLEMENTATIONS or "flash" in attn_implementation
        ):
            raise unsupported_attention_error(attn_implementation)
        return super()._check_and_adjust_attn_implementation(attn_implementation, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus self-contained remote code and ``auto_map``.

        The folder then loads with ``AutoModelForCausalLM.from_pretrained(folder,
        trust_remote_code=True)`` where hf_wavepos is not installed.
        """
        return _save_pretrained_with_remote_code(self, save_directory, super().save_pretrained, args, kwargs)


def swap_classes(model: torch.nn.Module, class_map: dict[type, type]) -> None:
    """Give every module of ``model`` whose exact type is a key of ``class_map`` the mapped class.

    The classes differ only in methods, so parameters, buffers and hooks are untouched; used both
    to build wavepos models from a config and to convert (or revert) a loaded model in place.
    """
    for module in model.modules():
        new = class_map.get(type(module))
        if new is not None:
            module.__class__ = new


def _save_pretrained_with_remote_code(model, save_directory, super_save, args, kwargs):
    # The registry installs the record on the package's classes (`link_classes` leaves a slot);
    # classes of the remote code itself have none: transformers copies that file on save.
    arch = getattr(type(model), "wavepos_architecture", None)
    if arch is None:
        return super_save(save_directory, *args, **kwargs)
    model.config.auto_map = arch.auto_map()
    result = super_save(save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        arch.write_remote_code(save_directory)
    return result
