"""`torch.library` custom ops around the kernels, autograd, and the backend entry points.

The forward and backward are custom ops (``hf_wavepos::wavelet_attention_fwd`` / ``_bwd``)
with fake implementations, so ``torch.compile`` traces through a model without graph breaks
and treats the kernels as opaque calls.
"""

from __future__ import annotations

import os
from dataclasses import astuple, dataclass
from typing import Any, Optional

import torch

from hf_wavepos.attention.chunked import chunked_backend
from hf_wavepos.attention.contract import AttentionCall, attention_call
from hf_wavepos.attention.triton.backward import attention_backward
from hf_wavepos.attention.triton.decode import attention_decode
from hf_wavepos.attention.triton.forward import Extras, attention_forward
from hf_wavepos.attention.triton.support import ChunkSupports, chunk_supports, padded_head_dim

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DECODE_MAX_QUERIES = 16  # the decoding kernel serves Lq <= this ...
DECODE_MAX_ROWS = 64  # ... when (query heads per key/value head) x Lq <= this


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes of one launch: ``block`` queries x ``block`` keys, table chunks of ``chunk``."""

    block: int
    chunk: int
    num_warps: int = 4
    num_stages: int = 2


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


def default_config(head_dim: int, device: torch.device) -> KernelConfig:
    """Tiles for a head size: 64 x 64 on GPU (32 for D > 128), 16 x 16 in the interpreter.

    Untuned defaults; override per call with ``block=`` / ``chunk=`` (see bench/attention_gpu.py).
    """
    block_d = padded_head_dim(head_dim)
    if device.type != "cuda":
        return KernelConfig(block=16, chunk=16)
    return KernelConfig(block=64 if block_d <= 128 else 32, chunk=min(32, block_d), num_warps=4, num_stages=2)


# ------------------------------------------------------------------------------ custom ops
@torch.library.custom_op("hf_wavepos::wavelet_attention_fwd", mutates_args=())
def wavelet_attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    sup_sorted: torch.Tensor, sup_chunk: torch.Tensor, order: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor], document_ids: Optional[torch.Tensor],
    attn_mask: Optional[torch.Tensor], alibi_slopes: Optional[torch.Tensor],
    scaling: float, q_offset: int, block: int, chunk: int, num_warps: int, num_stages: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Lq, D), lse (B, H, Lq) float32): the forward kernel."""
    extras = Extras.of(key_padding_mask, document_ids, attn_mask, alibi_slopes, sup_sorted)
    return attention_forward(
        q, k, v, table, sup_sorted, order, extras, scaling, q_offset, block, chunk, num_warps, num_stages,
    )


@wavelet_attention_fwd.register_fake
def _(q, k, v, table, sup_sorted, sup_chunk, order, key_padding_mask, document_ids, attn_mask,
      alibi_slopes, scaling, q_offset, block, chunk, num_warps, num_stages):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("hf_wavepos::wavelet_attention_bwd", mutates_args=())
def wavelet_attention_bwd(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor, table: torch.Tensor,
    sup_sorted: torch.Tensor, sup_chunk: torch.Tensor, order: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor], document_ids: Optional[torch.Tensor],
    attn_mask: Optional[torch.Tensor], alibi_slopes: Optional[torch.Tensor],
    scaling: float, q_offset: int, block: int, chunk: int, num_warps: int, num_stages: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv): the backward kernels."""
    extras = Extras.of(key_padding_mask, document_ids, attn_mask, alibi_slopes, sup_sorted)
    return attention_backward(
        grad_out, q, k, v, out, lse, table, sup_sorted, sup_chunk, order, extras,
        scaling, q_offset, block, chunk, num_warps, num_stages,
    )


@wavelet_attention_bwd.register_fake
def _(grad_out, q, k, v, out, lse, table, sup_sorted, sup_chunk, order, key_padding_mask,
      document_ids, attn_mask, alibi_slopes, scaling, q_offset, block, chunk, num_warps, num_stages):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


_N_TENSOR_INPUTS = 11  # q, k, v, table, sup_sorted, sup_chunk, order, pad, doc, attn_mask, slopes


def _setup_context(ctx, inputs, output):
    tensors, args = inputs[:_N_TENSOR_INPUTS], inputs[_N_TENSOR_INPUTS:]
    out, lse = output
    ctx.save_for_backward(*tensors, out, lse)
    ctx.args = args  # scaling, q_offset, block, chunk, num_warps, num_stages


def _backward(ctx, grad_out, grad_lse):
    q, k, v, table, sup_sorted, sup_chunk, order, pad, doc, mask, slopes, out, lse = ctx.saved_tensors
    dq, dk, dv = wavelet_attention_bwd(
        grad_out, q, k, v, out, lse, table, sup_sorted, sup_chunk, order, pad, doc, mask, slopes, *ctx.args
    )
    return (dq, dk, dv) + (None,) * (_N_TENSOR_INPUTS - 3 + len(ctx.args))


wavelet_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------ entry points
def _check_runnable(q: torch.Tensor) -> None:
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"the triton backend supports float16, bfloat16 and float32, got {q.dtype}; use "
            "backend='reference' (exact float64) or 'chunked'."
        )
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


@dataclass(frozen=True)
class _Call:
    """One validated call, ready for the kernels."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    table: torch.Tensor  # (R, D) in q's dtype
    supports: ChunkSupports
    masks: tuple  # key_padding_mask, document_ids, attn_mask, alibi_slopes (each or None)
    config: KernelConfig


def _prepare(q, k, v, table, masks, block, chunk) -> _Call:
    """Contiguous last dims, the table in q's dtype, chunk supports, tile sizes."""
    config = default_config(q.shape[-1], q.device)
    block = block or config.block
    chunk = chunk or config.chunk
    if block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two >= 16, got {block}.")
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    supports = chunk_supports(table, chunk)
    table = table.detach().to(q.dtype).contiguous()
    pad, doc, mask, slopes = masks
    if doc is not None and doc.dtype not in (torch.int32, torch.int64):
        doc = doc.to(torch.int64)
    config = KernelConfig(block, chunk, config.num_warps, config.num_stages)
    return _Call(q, k, v, table, supports, (pad, doc, mask, slopes), config)


def _decode(call: _Call, shape, block_n: int | None = None, n_splits: int | None = None) -> torch.Tensor:
    extras = Extras.of(*call.masks, call.supports.sorted)
    with torch.no_grad():
        return attention_decode(
            call.q, call.k, call.v, call.table, call.supports.sorted, call.supports.order, extras,
            shape.scaling, shape.q_offset, call.config.chunk, block_n=block_n, n_splits=n_splits,
        )


def triton_backend(
    call: AttentionCall, block: int | None = None, chunk: int | None = None, decode: bool | None = None
) -> torch.Tensor:
    """Fused wavelet attention (Eq. 10) of one validated call (float16 / bfloat16 / float32, CUDA).

    Args:
        call: the validated call; (B, H, Lq, D) in q's dtype comes back, rows that see no key zero.
            A call with a tensor offset (traced by torch.compile) is computed by
            `hf_wavepos.attention.chunked.static_shape_attention` (one graph for every step).
        block: tile size (power of two >= 16); default from `default_config`.
        chunk: table columns per chunk for support skipping (power of two >= 16).
        decode: use the split-K decoding kernel; default: when no gradient is needed and
            Lq <= 16 with (H / Hkv) x Lq <= 64.

    Raises:
        ValueError: for another dtype or device, a bad ``block``, or ``decode=True`` where the
            decoding kernel cannot serve the call.
    """
    q, k, v = call.q, call.k, call.v
    _check_runnable(q)
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
    prepared = _prepare(q, k, v, call.table, _masks(call), block, chunk)
    if decode:
        return _decode(prepared, call)
    sup = prepared.supports
    out, _ = wavelet_attention_fwd(
        prepared.q, prepared.k, prepared.v, prepared.table, sup.sorted, sup.by_chunk, sup.order, *prepared.masks,
        call.scaling, call.q_offset, *astuple(prepared.config),
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
    cache), with Lq <= 16 and (H / Hkv) x Lq <= 64, e.g. one new token; plus ``chunk`` (table
    columns per chunk), ``block_n`` (keys per tile) and ``n_splits`` (cache slices, default: two
    programs per multiprocessor).

    Raises:
        ValueError: as `triton_backend`, and when the call has too many query rows.
    """
    call = attention_call(q, k, v, table, **contract)
    _check_runnable(q)
    if call.q_len > DECODE_MAX_QUERIES or call.groups * call.q_len > DECODE_MAX_ROWS:
        raise ValueError(
            f"triton_decode_attention serves Lq <= {DECODE_MAX_QUERIES} with (H / Hkv) x Lq <= "
            f"{DECODE_MAX_ROWS}; got Lq={call.q_len}, H/Hkv={call.groups}. Use triton_attention."
        )
    if call.q_len == 0 or call.k_len == 0:
        return q.new_zeros(q.shape)
    return _decode(_prepare(q, k, v, table, _masks(call), None, chunk), call, block_n, n_splits)
