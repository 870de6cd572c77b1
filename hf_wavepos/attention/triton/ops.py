"""`torch.library` custom ops around the kernels, autograd, and the backend entry points.

The forward, backward and decoding kernels run inside custom ops (``hf_wavepos::wavelet_attention_fwd``
/ ``_bwd`` / ``_decode``) with fake implementations, so ``torch.compile`` traces through a model
without graph breaks and treats the kernels as opaque calls. Tile configurations are looked up
inside the ops (`configs.configs_for` for the device's target), i.e. outside any traced region.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from hf_wavepos.attention.chunked import chunked_backend
from hf_wavepos.attention.contract import AttentionCall, attention_call
from hf_wavepos.attention.triton.backward import backward_launches
from hf_wavepos.attention.triton.configs import (
    KernelConfigs,
    check_launch_args,
    check_served,
    configs_for,
    default_chunk,
    target_of,
)
from hf_wavepos.attention.triton.decode import decode_launches, default_splits
from hf_wavepos.attention.triton.forward import forward_launches
from hf_wavepos.attention.triton.launch import Extras, Launch, rows_contiguous
from hf_wavepos.attention.triton.support import ChunkSupports, chunk_supports

DECODE_MAX_QUERIES = 16  # the decoding kernel serves Lq <= this ...
DECODE_MAX_ROWS = 64  # ... when (query heads per key/value head) x Lq <= this


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on the CPU through the interpreter)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def interpreter_ready() -> bool:
    """True when triton itself was imported under ``TRITON_INTERPRET=1``.

    Triton decides at definition time whether a ``@triton.jit`` function (its own library
    included, e.g. ``tl.max``) is compiled or interpreted, so the variable must be set before
    triton is first imported. Note that ``import hf_wavepos`` imports triton (through
    ``torch._dynamo``); set it first, e.g. at the top of a test ``conftest.py``.
    """
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    return not isinstance(tl.max, JITFunction)


def kernel_configs(q: torch.Tensor, block: int = 0) -> KernelConfigs:
    """The configurations the kernels use for q's device, dtype and head dim (block > 0 overrides
    the prefill tile)."""
    return configs_for(target_of(q.device), q.dtype, q.shape[-1]).with_block(block or None)


def _run(launches: list[Launch]) -> None:
    for launch in launches:
        launch()


# ------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("hf_wavepos::wavelet_attention_fwd", mutates_args=())
def wavelet_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    sup_sorted: torch.Tensor, sup_chunk: torch.Tensor, order: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor], document_ids: Optional[torch.Tensor],
    attn_mask: Optional[torch.Tensor], alibi_slopes: Optional[torch.Tensor],
    scaling: float, q_offset: int, block: int, chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Lq, D) dense, lse (B, H, Lq) float32): the forward kernel (block 0: the default)."""
    extras = Extras.of(key_padding_mask, document_ids, attn_mask, alibi_slopes, sup_sorted)
    launches, out, lse = forward_launches(
        q, k, v, table, sup_sorted, order, extras, scaling, q_offset, kernel_configs(q, block).forward, chunk,
    )
    _run(launches)
    return out, lse


@wavelet_attention_fwd.register_fake
def _(q, k, v, table, sup_sorted, sup_chunk, order, key_padding_mask, document_ids, attn_mask,
      alibi_slopes, scaling, q_offset, block, chunk):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("hf_wavepos::wavelet_attention_bwd", mutates_args=())
def wavelet_attention_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, table: torch.Tensor,
    sup_sorted: torch.Tensor, sup_chunk: torch.Tensor, order: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor], document_ids: Optional[torch.Tensor],
    attn_mask: Optional[torch.Tensor], alibi_slopes: Optional[torch.Tensor],
    scaling: float, q_offset: int, block: int, chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv), dense: the backward kernels."""
    extras = Extras.of(key_padding_mask, document_ids, attn_mask, alibi_slopes, sup_sorted)
    configs = kernel_configs(q, block)
    launches, dq, dk, dv = backward_launches(
        rows_contiguous(grad_out), q, k, v, out, lse, table, sup_sorted, sup_chunk, order, extras,
        scaling, q_offset, configs.backward_dq, configs.backward_dkdv, chunk,
    )
    _run(launches)
    return dq, dk, dv


@wavelet_attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, table, sup_sorted, sup_chunk, order, key_padding_mask,
      document_ids, attn_mask, alibi_slopes, scaling, q_offset, block, chunk):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


_N_TENSOR_INPUTS = 11  # q, k, v, table, sup_sorted, sup_chunk, order, pad, doc, attn_mask, slopes


def _setup_context(ctx, inputs, output):
    tensors, args = inputs[:_N_TENSOR_INPUTS], inputs[_N_TENSOR_INPUTS:]
    out, lse = output
    ctx.save_for_backward(*tensors, out, lse)
    ctx.args = args  # scaling, q_offset, block, chunk


def _backward(ctx, grad_out, grad_lse):
    q, k, v, table, sup_sorted, sup_chunk, order, pad, doc, mask, slopes, out, lse = ctx.saved_tensors
    dq, dk, dv = wavelet_attention_bwd(
        grad_out, q, k, v, out, lse, table, sup_sorted, sup_chunk, order, pad, doc, mask, slopes, *ctx.args
    )
    return (dq, dk, dv) + (None,) * (_N_TENSOR_INPUTS - 3 + len(ctx.args))


wavelet_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("hf_wavepos::wavelet_attention_decode", mutates_args=())
def wavelet_attention_decode(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    sup_sorted: torch.Tensor, order: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor], document_ids: Optional[torch.Tensor],
    attn_mask: Optional[torch.Tensor], alibi_slopes: Optional[torch.Tensor],
    scaling: float, q_offset: int, chunk: int, block_n: int, n_splits: int,
) -> torch.Tensor:
    """out (B, H, Lq, D) dense: the split-K decoding kernels (block_n, n_splits 0: the defaults)."""
    extras = Extras.of(key_padding_mask, document_ids, attn_mask, alibi_slopes, sup_sorted)
    tile = kernel_configs(q).decode
    if block_n:
        tile = type(tile)(block_n, tile.num_warps, tile.num_stages)
    n_splits = n_splits or default_splits(q.device, q.shape[0] * k.shape[1])
    launches, out = decode_launches(q, k, v, table, sup_sorted, order, extras, scaling, q_offset, tile, chunk, n_splits)
    _run(launches)
    return out


@wavelet_attention_decode.register_fake
def _(q, k, v, table, sup_sorted, order, key_padding_mask, document_ids, attn_mask, alibi_slopes,
      scaling, q_offset, chunk, block_n, n_splits):
    return q.new_empty(q.shape)


# ------------------------------------------------------------------------------ entry points
def _check_runnable(q: torch.Tensor) -> None:
    check_served(q.dtype, q.shape[-1])
    if q.device.type != "cuda" and not interpreting():
        raise ValueError(
            f"the triton backend needs a CUDA device, got {q.device}; use backend='chunked' on "
            "CPU (or set TRITON_INTERPRET=1 before importing triton to run the kernels slowly "
            "for testing)."
        )
    if q.device.type != "cuda" and not interpreter_ready():
        raise ValueError(
            "TRITON_INTERPRET=1 was set after triton was imported, so triton's own functions are "
            "compiled, not interpreted; set it before the first import of triton (importing "
            "hf_wavepos or torch._dynamo imports it), e.g. at the top of conftest.py."
        )


@dataclass
class _Call:
    """One validated call, ready for the kernels."""

    q: torch.Tensor  # (B, H, Lq, D), unit last stride, other strides as given
    k: torch.Tensor
    v: torch.Tensor
    table: torch.Tensor  # (R, D) contiguous in q's dtype
    supports: ChunkSupports
    masks: tuple  # key_padding_mask, document_ids, attn_mask, alibi_slopes (each or None)
    chunk: int


def _prepare(q, k, v, table, masks, chunk) -> _Call:
    """Unit last strides, the table in q's dtype, chunk supports (tile arguments already checked)."""
    chunk = chunk or default_chunk(q.shape[-1])
    q, k, v = (rows_contiguous(t) for t in (q, k, v))
    supports = chunk_supports(table, chunk)
    table = table.detach().to(q.dtype).contiguous()
    pad, doc, mask, slopes = masks
    if doc is not None and doc.dtype not in (torch.int32, torch.int64):
        doc = doc.to(torch.int64)
    return _Call(q, k, v, table, supports, (pad, doc, mask, slopes), chunk)


def _decode(call: _Call, shape: AttentionCall, block_n: int | None = None, n_splits: int | None = None) -> torch.Tensor:
    sup = call.supports
    return wavelet_attention_decode(
        call.q, call.k, call.v, call.table, sup.sorted, sup.order, *call.masks,
        shape.scaling, shape.q_offset, call.chunk, block_n or 0, n_splits or 0,
    )


def triton_backend(
    call: AttentionCall, block: int | None = None, chunk: int | None = None, decode: bool | None = None
) -> torch.Tensor:
    """Fused wavelet attention (Eq. 10) of one validated call (float16 / bfloat16 / float32, CUDA).

    Args:
        call: the validated call (`hf_wavepos.attention.contract.AttentionCall`); q, k, v may be
            any views with a unit last stride (fused-qkv chunks, transposes, expanded keys). A
            call with a tensor offset (traced by torch.compile) is computed by
            `hf_wavepos.attention.chunked.static_shape_attention` (one graph for every step).
        block: prefill tile size, a power of two in [16, 128]; default: the table of
            `configs` for the device, dtype and head dim.
        chunk: table columns per chunk for support skipping (a power of two >= 16 dividing the
            padded head dim); default 32.
        decode: use the split-K decoding kernel; default: when no gradient is needed and
            Lq <= 16 with (H / Hkv) x Lq <= 64.

    Returns:
        (B, H, Lq, D) dense (row-major) in q's dtype; rows that see no key are zero.

    Raises:
        ValueError naming the argument and the fix, before any work, for a dtype, head dim or
        device the kernels do not serve, tile arguments (`configs.check_launch_args`), or
        ``decode=True`` where the decoding kernel cannot serve the call.
    """
    q, k, v = call.q, call.k, call.v
    _check_runnable(q)
    check_launch_args(call.head_dim, block=block, chunk=chunk)
    if call.q_len == 0 or call.k_len == 0:
        return q.new_zeros(q.shape)
    if call.has_tensor_offset:
        # A static-cache step traced by torch.compile keeps its offset on the device; the kernels
        # take it as a host integer (one graph per step), so it is computed with shapes only.
        return chunked_backend(call)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    small = call.q_len <= DECODE_MAX_QUERIES and call.groups * call.q_len <= DECODE_MAX_ROWS
    if decode is None:
        decode = small and not needs_grad
    if decode and (needs_grad or not small):
        raise ValueError(
            f"decode=True needs Lq <= {DECODE_MAX_QUERIES}, (H / Hkv) x Lq <= {DECODE_MAX_ROWS} and no "
            f"gradient; got Lq={call.q_len}, H/Hkv={call.groups}, grad={needs_grad}. Leave decode=None."
        )
    prepared = _prepare(q, k, v, call.table, _masks(call), chunk)
    if decode:
        return _decode(prepared, call)
    sup = prepared.supports
    out, _ = wavelet_attention_fwd(
        prepared.q, prepared.k, prepared.v, prepared.table, sup.sorted, sup.by_chunk, sup.order, *prepared.masks,
        call.scaling, call.q_offset, block or 0, prepared.chunk,
    )
    return out


def _masks(call: AttentionCall) -> tuple:
    return call.key_padding_mask, call.document_ids, call.attn_mask, call.alibi_slopes


def triton_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, *,
    block: int | None = None, chunk: int | None = None, decode: bool | None = None, **contract: Any,
) -> torch.Tensor:
    """The ``triton`` backend called directly: arguments, result and errors as
    `hf_wavepos.wavepos_attention` (the contract: `hf_wavepos.attention.contract.AttentionCall`),
    plus ``block``, ``chunk`` and ``decode`` of `triton_backend`."""
    return triton_backend(attention_call(q, k, v, table, **contract), block, chunk, decode)


def triton_decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, *,
    chunk: int | None = None, block_n: int | None = None, n_splits: int | None = None, **contract: Any,
) -> torch.Tensor:
    """Decoding step(s) over a KV cache with the split-K kernel (no autograd).

    Arguments and result as `hf_wavepos.wavepos_attention` (q_offset = Lk - Lq for a dynamic
    cache), with Lq <= 16 and (H / Hkv) x Lq <= 64, e.g. one new token; the output is dense in
    q's dtype. Plus:

        chunk: table columns per chunk (as in `triton_backend`).
        block_n: keys per tile, a power of two in [16, 256]; default from `configs`.
        n_splits: cache slices, an int in [1, 65535]; default: two programs per multiprocessor.

    Raises:
        ValueError naming the argument and the fix, before any work: as `triton_backend`, and
        when the call has too many query rows.
    """
    call = attention_call(q, k, v, table, **contract)
    _check_runnable(q)
    check_launch_args(call.head_dim, chunk=chunk, block_n=block_n, n_splits=n_splits)
    if call.q_len > DECODE_MAX_QUERIES or call.groups * call.q_len > DECODE_MAX_ROWS:
        raise ValueError(
            f"triton_decode_attention serves Lq <= {DECODE_MAX_QUERIES} with (H / Hkv) x Lq <= "
            f"{DECODE_MAX_ROWS}; got Lq={call.q_len}, H/Hkv={call.groups}. Use triton_attention."
        )
    if call.q_len == 0 or call.k_len == 0:
        return q.new_zeros(q.shape)
    return _decode(_prepare(q, k, v, table, _masks(call), chunk), call, block_n, n_splits)
