"""hf_wavepos: wavelet-based relative positions (Oka et al., ICLR 2025) for Hugging Face models.

Importing the package registers the model types ``wavepos_llama``, ``wavepos_gpt_neox`` and
``wavepos_gpt2`` with transformers' Auto classes.
"""

from hf_wavepos.version import __version__
from hf_wavepos.attention import available_backends, use_backend, wavepos_attention  # noqa: E402
from hf_wavepos.basis import wavelet_support, wavelet_table  # noqa: E402
from hf_wavepos.wavelets import register_wavelet, registered_wavelets  # noqa: E402
from hf_wavepos.config import PRESETS, WavePosConfig  # noqa: E402
from hf_wavepos.models import (  # noqa: E402
    WavePosGPT2Config,
    WavePosGPT2LMHeadModel,
    WavePosGPTNeoXConfig,
    WavePosGPTNeoXForCausalLM,
    WavePosLlamaConfig,
    WavePosLlamaForCausalLM,
    apply_wavepos,
    lora_target_modules,
    revert_wavepos,
    supported_model_types,
)
from hf_wavepos.models.registry import register_peft_defaults as _register_peft_defaults  # noqa: E402

_register_peft_defaults()

__all__ = [
    "PRESETS",
    "WavePosConfig",
    "WavePosGPT2Config",
    "WavePosGPT2LMHeadModel",
    "WavePosGPTNeoXConfig",
    "WavePosGPTNeoXForCausalLM",
    "WavePosLlamaConfig",
    "WavePosLlamaForCausalLM",
    "__version__",
    "apply_wavepos",
    "available_backends",
    "lora_target_modules",
    "register_wavelet",
    "registered_wavelets",
    "revert_wavepos",
    "supported_model_types",
    "use_backend",
    "wavelet_support",
    "wavelet_table",
    "wavepos_attention",
]
