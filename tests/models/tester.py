"""The per-architecture tester: tiny stock and wavepos models of every registered architecture.

Every model test is parametrised over `ARCHS`, the registry's architectures, and builds its
models from the registry entry (`Architecture.tiny_config`), so a new architecture is tested by
registering it: no list of architectures and no ``if arch == ...`` here.
"""

from __future__ import annotations

import torch

from hf_wavepos import apply_wavepos
from hf_wavepos.models.registry import Architecture, architecture_of, registered_architectures

VOCAB = 96
"""Vocabulary of every tiny config (`Architecture.tiny_config`): what `tokens` draws from."""

ARCHS = [arch.stock_model_type for arch in registered_architectures()]


def stock_model(arch: str | Architecture, seed: int = 0) -> torch.nn.Module:
    """A tiny stock model of ``arch`` (its registry entry's ``tiny_config``), in eval mode."""
    arch = architecture_of(arch) if isinstance(arch, str) else arch
    torch.manual_seed(seed)
    return arch.stock_causal_lm_class(arch.stock_config_class(**arch.tiny_config)).eval()


def wavepos_model(arch: str | Architecture, preset="oka2025", seed: int = 0) -> torch.nn.Module:
    """`stock_model` converted with ``preset``."""
    return apply_wavepos(stock_model(arch, seed), preset)


def tokens(*shape, seed=1) -> torch.Tensor:
    """Random token ids in [1, VOCAB) (0 is the tiny configs' pad id)."""
    return torch.randint(1, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def project_qkv(attn: torch.nn.Module, hidden: torch.Tensor):
    """A wavepos attention module's q, k, v, (B, H|Hkv, L, D), and its output projection."""
    q, k, v = attn.project_qkv(hidden)
    return q, k, v, attn.project_output
