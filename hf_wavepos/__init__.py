"""hf_wavepos: wavelet-based relative positions (Oka et al., ICLR 2025) for Hugging Face models."""

from hf_wavepos.attention import available_backends, use_backend, wavepos_attention
from hf_wavepos.basis import register_wavelet, registered_wavelets, wavelet_support, wavelet_table
from hf_wavepos.config import PRESETS, WavePosConfig

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "WavePosConfig",
    "__version__",
    "available_backends",
    "register_wavelet",
    "registered_wavelets",
    "use_backend",
    "wavelet_support",
    "wavelet_table",
    "wavepos_attention",
]
