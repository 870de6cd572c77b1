"""Kernel launches as data, and the memory-layout rules every launch follows.

A launch wrapper (`forward.forward_launches`, ...) allocates its outputs and returns `Launch`
objects; running them is one call each. The same objects, built from ``meta`` tensors, are what
`compile_check` compiles ahead of time for a GPU target, so the CI compile test sees exactly the
arguments, specialisations and options a GPU would.

Layout rules (the stride contract between tensors and kernels):

* Kernels index every tensor through its own strides and assume only a unit stride of the last
  (head) dimension. `rows_contiguous` gives inputs that; any other view transformers hands over
  (fused-qkv chunks of GPT-NeoX ``query_key_value``, GPT-2 ``c_attn`` splits, transposes, slices,
  expanded GQA keys with stride 0) is passed as it is.
* Outputs and gradients are allocated dense and row-major with `dense` and passed to the kernels
  with *their own* strides, never an input's: ``torch.empty_like`` of a non-dense view is dense
  with other strides, so writing it with the view's strides goes out of bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# CUDA's grid limits per axis (x, y, z).
MAX_GRID = (2**31 - 1, 65535, 65535)


def dense(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised row-major (contiguous) tensor: the layout of every kernel output."""
    return torch.empty(shape, dtype=dtype, device=device)


def rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last dimension has unit stride (any other strides are fine), else a copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def row_strides(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of every dimension but the last, which must be 1 (the kernels' column stride).

    Raises:
        ValueError: the last dimension is not contiguous (use `rows_contiguous` first).
    """
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"kernel tensors need a unit stride in the last dimension, got strides {t.stride()}.")
    return tuple(t.stride()[:-1])


@dataclass
class Launch:
    """One kernel launch: ``kernel[grid](*args, **meta)``.

    Attributes:
        kernel: the ``@triton.jit`` function.
        grid: programs per axis (checked against CUDA's limits `MAX_GRID` on creation).
        args: positional arguments (tensors, ints, floats), in the kernel's order.
        meta: constexpr arguments and compile options (``num_warps``, ``num_stages``).
    """

    kernel: Any
    grid: tuple[int, ...]
    args: tuple
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for axis, (size, limit) in enumerate(zip(self.grid, MAX_GRID)):
            if size > limit:
                raise ValueError(
                    f"{self.name}: grid axis {axis} needs {size} programs, over CUDA's limit of {limit}; "
                    "split the call (fewer sequences, heads or tokens per call)."
                )

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__

    def __call__(self) -> None:
        if min(self.grid) > 0:
            self.kernel[self.grid](*self.args, **self.meta)


LOG2E = 1.4426950408889634  # the kernels work with base-2 logits


def flags_or_dummy(mask: torch.Tensor | None, fallback: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Pointer argument and batch stride for an optional (B, Lk) tensor (bool -> uint8 view)."""
    if mask is None:
        return fallback, 0
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    mask = mask.contiguous()
    return mask, mask.stride(0)


@dataclass
class Extras:
    """Kernel arguments for the optional inputs (dummies when absent), shared by every launcher."""

    pad: torch.Tensor
    doc: torch.Tensor
    mask: torch.Tensor
    slopes: torch.Tensor
    strides: tuple[int, int, int, int, int]  # pad batch, doc batch, mask batch / query / key
    flags: dict

    @staticmethod
    def of(key_padding_mask, document_ids, attn_mask, alibi_slopes, dummy: torch.Tensor) -> "Extras":
        """Args: (B, Lk) bool, (B, Lk) int, (B|1, 1, Lq, Lk) bool (any strides), (H,) float, each or None;
        dummy: any tensor on the device, passed for absent ones (never read)."""
        pad, stride_pad = flags_or_dummy(key_padding_mask, dummy)
        doc, stride_doc = flags_or_dummy(document_ids, dummy)
        mask, mask_strides = dummy, (0, 0, 0)
        if attn_mask is not None:
            mask = attn_mask.view(torch.uint8) if attn_mask.dtype == torch.bool else attn_mask
            mask_strides = (mask.stride(0) if mask.shape[0] > 1 else 0, mask.stride(2), mask.stride(3))
        slopes = dummy
        if alibi_slopes is not None:
            slopes = (alibi_slopes.to(torch.float32) * LOG2E).contiguous()  # base-2 logits
        flags = dict(
            HAS_PAD=key_padding_mask is not None, HAS_DOC=document_ids is not None,
            HAS_MASK=attn_mask is not None, HAS_ALIBI=alibi_slopes is not None,
        )
        return Extras(pad, doc, mask, slopes, (stride_pad, stride_doc, *mask_strides), flags)
