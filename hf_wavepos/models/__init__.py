"""Wavepos model types for transformers: ``wavepos_llama``, ``wavepos_gpt_neox``, ``wavepos_gpt2``."""

from hf_wavepos.models.gpt2 import WavePosGPT2Config, WavePosGPT2LMHeadModel, WavePosGPT2Model
from hf_wavepos.models.gpt_neox import WavePosGPTNeoXConfig, WavePosGPTNeoXForCausalLM, WavePosGPTNeoXModel
from hf_wavepos.models.llama import WavePosLlamaConfig, WavePosLlamaForCausalLM, WavePosLlamaModel
from hf_wavepos.models.registry import (
    apply_wavepos,
    lora_target_modules,
    register_peft_defaults,
    revert_wavepos,
    supported_model_types,
)

__all__ = [
    "WavePosGPT2Config",
    "WavePosGPT2LMHeadModel",
    "WavePosGPT2Model",
    "WavePosGPTNeoXConfig",
    "WavePosGPTNeoXForCausalLM",
    "WavePosGPTNeoXModel",
    "WavePosLlamaConfig",
    "WavePosLlamaForCausalLM",
    "WavePosLlamaModel",
    "apply_wavepos",
    "lora_target_modules",
    "register_peft_defaults",
    "revert_wavepos",
    "supported_model_types",
]
