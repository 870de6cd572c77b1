"""What every wavepos architecture shares: the attention step, backend choice, masks, save hook.

An architecture file subclasses the stock attention module and overrides only ``forward``: it
projects q, k, v exactly as the stock module does, skips the rotary embedding, reads the cache
offset *before* updating the cache, and hands the rest to `WavePosAttentionMixin.wavepos_attend`.
Parameter names are unchanged, so checkpoints, PEFT targets and tensor-parallel plans stay valid.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import torch

from hf_wavepos.attention.dispatch import available_backends, default_backend, wavepos_attention
from hf_wavepos.basis import log_n_scale
from hf_wavepos.config import WavePosConfig
from hf_wavepos.positions import positional_inputs

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


@functools.lru_cache(maxsize=32)
def _parse_section(items: tuple) -> WavePosConfig:
    return WavePosConfig.from_dict(dict(items))


def wavepos_config_of(config: Any) -> WavePosConfig:
    """The `WavePosConfig` stored in a transformers config's ``wavepos`` section."""
    section = getattr(config, "wavepos", None)
    if section is None:
        raise ValueError(f"{type(config).__name__} has no 'wavepos' section; convert with apply_wavepos first.")
    if isinstance(section, WavePosConfig):
        return section
    return _parse_section(tuple(sorted(section.items())))


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


def documents_from_positions(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Document ids (B, L) of packed sequences: a new document starts where positions do not step by 1.

    Returns None when every row holds one document (the common case: no mask needed). Same rule
    as transformers' packed-sequence detection, but kept compact: O(L), not an L x L mask.
    """
    step = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
    documents = (step != 1).cumsum(-1)
    if not bool((documents[:, -1] != 0).any()):
        return None
    return documents


def cache_offset(cache: Any, layer_idx: int) -> int:
    """Number of tokens already cached for this layer: the position of the first new query.

    Read before ``cache.update``; StaticCache returns a live tensor that update mutates, so the
    value is taken now.
    """
    if cache is None:
        return 0
    self_attention = getattr(cache, "self_attention_cache", cache)  # EncoderDecoderCache (GPT-2)
    length = self_attention.get_seq_length(layer_idx)
    return int(length.item()) if isinstance(length, torch.Tensor) else int(length)


class WavePosAttentionMixin:
    """Adds `wavepos_attend` to a stock attention module (which provides ``self.config``)."""

    def wavepos_attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        *,
        q_offset: int,
        position_ids: torch.Tensor | None,
        scaling: float,
        dropout: float,
    ) -> torch.Tensor:
        """Attention with the configured position method (Eq. 10 for wavelets).

        Args:
            query: (B, H, Lq, D) projected queries, no rotary embedding.
            key, value: (B, Hkv, Lk, D) after the cache update.
            attention_mask: what transformers passes the attention module (None or 4-D).
            q_offset: cached tokens before the first query (`cache_offset`).
            position_ids: (B|1, Lq) positions of the queries in their sequences: log-n scaling, and
                packed documents (positions restarting) never attend across a boundary.
            scaling: the stock module's logit scale.
            dropout: the stock module's attention dropout probability (must be 0 while training).

        Returns:
            (B, Lq, H, D), the layout transformers' attention functions return.
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
                position_ids = torch.arange(q_offset, q_offset + Lq, device=query.device)[None]
            scale = log_n_scale(position_ids, wp.train_length).to(query.dtype)  # (B|1, Lq)
            query = query * scale[:, None, :, None]
        table, slopes = positional_inputs(wp, D, H, q_offset + Lq, query.device, query.dtype)
        attn_mask = visibility_from_hf_mask(attention_mask, Lq, key.shape[2])
        document_ids = None
        if position_ids is not None and q_offset == 0 and Lq == key.shape[2] > 1:
            document_ids = documents_from_positions(position_ids.expand(B, Lq))  # packed sequences
        backend = backend_for(getattr(self.config, "_attn_implementation", None), query.device)
        out = wavepos_attention(
            query, key, value, table, scaling=scaling, q_offset=q_offset, document_ids=document_ids,
            attn_mask=attn_mask, alibi_slopes=slopes, backend=backend,
        )
        return out.transpose(1, 2)


class WavePosPreTrainedMixin:
    """Model-level behaviour shared by every wavepos model class (put it first in the bases)."""

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
    try:  # The package: write the bundled remote code and point auto_map at it.
        registry = importlib.import_module("hf_wavepos.models.registry")
        remote = importlib.import_module("hf_wavepos.models.remote")
    except ImportError:  # This file is itself the remote code: transformers copies it on save.
        return super_save(save_directory, *args, **kwargs)
    arch = registry.architecture_of(model.config.model_type)
    model.config.auto_map = arch.auto_map()
    result = super_save(save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True):
        remote.write_remote_code(save_directory, arch.source_file, arch.model_type)
    return result
