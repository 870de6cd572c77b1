"""Qwen2 with wavelet positions: model type ``wavepos_qwen2``. An example of a fourth architecture.

This file and one `hf_wavepos.models.registry.Architecture` entry (see
``tests/models/test_registry.py``) are everything a Llama-like architecture needs: conversion,
Auto classes, save / load with remote code, LoRA names and the model tests all read the entry.
Qwen2's q/k/v projections carry a bias; `SeparateProjectionsAttention` calls them as they are.
Layers with a sliding window (``use_sliding_window=True``) are not covered by this example.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2ForCausalLM, Qwen2Model

from hf_wavepos.models.common import SeparateProjectionsAttention, WavePosConfigMixin, WavePosPreTrainedMixin
from hf_wavepos.models.linking import link_classes


def qwen2_head_dim(config: Any) -> int:
    """Per-head size of a Qwen2 config: ``head_dim`` when set, else hidden_size // num_attention_heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class WavePosQwen2Config(WavePosConfigMixin, Qwen2Config):
    """`Qwen2Config` plus ``wavepos``: the `WavePosConfig` dict (default preset ``oka2025``)."""

    model_type = "wavepos_qwen2"
    wavepos: dict | None = None
    wavepos_head_dim = qwen2_head_dim


class WavePosQwen2Attention(SeparateProjectionsAttention, Qwen2Attention):
    """`Qwen2Attention` without RoPE, attending through `wavepos_attend` (same parameters)."""


class WavePosQwen2Model(WavePosPreTrainedMixin, Qwen2Model):
    config_class = WavePosQwen2Config


class WavePosQwen2ForCausalLM(WavePosPreTrainedMixin, Qwen2ForCausalLM):
    config_class = WavePosQwen2Config


CLASS_MAP: dict[type, type] = link_classes(WavePosQwen2Attention, WavePosQwen2Model, WavePosQwen2ForCausalLM)
