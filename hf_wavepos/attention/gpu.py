"""Registration of the GPU backends (Triton kernels, FlexAttention) with the dispatcher.

Kept apart from `hf_wavepos.attention.dispatch` so that the self-contained remote code, which
bundles the dispatcher, carries only the portable backends. The kernels are imported on first
call: importing hf_wavepos never imports triton (whose kernels read TRITON_INTERPRET when they
are defined). CUDA only; chunked stays the CPU default. triton serves every preset; flex refuses
tables whose band exceeds FLEX_MAX_BAND.

The triton backend checks itself on first use (`triton.selfcheck`): the first call of each kind
in a process compares it with the chunked backend on a small problem, and a kind that fails warns
once and runs on chunked from then on.
"""

from __future__ import annotations

from typing import Callable

import torch

from hf_wavepos.attention.contract import AttentionCall
from hf_wavepos.attention.dispatch import OPTIONAL_INPUTS, register_backend


def _cuda_and_importable(module: str) -> Callable[[torch.device], bool]:
    import importlib.util

    importable = importlib.util.find_spec(module) is not None
    return lambda device: device.type == "cuda" and importable


def _triton_backend(call: AttentionCall) -> torch.Tensor:
    from hf_wavepos.attention.triton.selfcheck import checked_triton_backend

    return checked_triton_backend(call)


def _flex_backend(call: AttentionCall) -> torch.Tensor:
    from hf_wavepos.attention.flex import flex_backend

    return flex_backend(call)


register_backend("triton", _triton_backend, supports=_cuda_and_importable("triton"), priority=30, accepts=OPTIONAL_INPUTS)
register_backend("flex", _flex_backend, supports=_cuda_and_importable("torch.nn.attention.flex_attention"), priority=20, accepts=OPTIONAL_INPUTS)
