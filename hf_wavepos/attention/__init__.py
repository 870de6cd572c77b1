"""Wavelet attention backends behind one signature (see `wavepos_attention`)."""

from hf_wavepos.attention.chunked import chunked_attention
from hf_wavepos.attention.dispatch import (
    available_backends,
    default_backend,
    register_backend,
    use_backend,
    wavepos_attention,
)
from hf_wavepos.attention.reference import reference_attention
from hf_wavepos.attention import gpu as _gpu  # noqa: F401  (registers the CUDA backends)

__all__ = [
    "available_backends",
    "chunked_attention",
    "default_backend",
    "reference_attention",
    "register_backend",
    "use_backend",
    "wavepos_attention",
]
