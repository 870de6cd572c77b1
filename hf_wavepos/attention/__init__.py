"""Wavelet attention backends behind one contract (see `wavepos_attention` and `AttentionCall`)."""

from hf_wavepos.attention.chunked import chunked_attention
from hf_wavepos.attention.contract import AttentionCall, attention_call
from hf_wavepos.attention.dispatch import (
    available_backends,
    default_backend,
    get_backend,
    register_backend,
    use_backend,
    wavepos_attention,
)
from hf_wavepos.attention.reference import reference_attention
from hf_wavepos.attention import gpu as _gpu  # noqa: F401  (registers the CUDA backends)

__all__ = [
    "AttentionCall",
    "attention_call",
    "available_backends",
    "chunked_attention",
    "default_backend",
    "get_backend",
    "reference_attention",
    "register_backend",
    "use_backend",
    "wavepos_attention",
]
