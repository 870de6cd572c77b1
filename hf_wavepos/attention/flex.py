"""FlexAttention backend: the wavelet term as a ``score_mod`` over a band of distances (GPU).

Algorithm (Eq. 10 with the contract of `hf_wavepos.attention.contract`):

1. Band. R = one more than the largest distance whose table row has an entry >= 1e-6
   (`hf_wavepos.basis.table_support`, over the distances that occur, 0 .. q_offset + Lq - 1; float64
   skips only exact zeros). Past R the positional term is skipped (the METHOD.md rule).
2. QP = q @ p[0 .. R-1]^T, shape (B, H, Lq, R), in q's dtype, computed *outside* FlexAttention
   by an ordinary matmul, so autograd carries the gradient of the wavelet term to q (p is fixed).
3. ``score_mod`` adds QP[b, h, i, m - n] * scaling for distances m - n < R to FlexAttention's
   q.k * scaling; a ``block_mask`` (causal + key padding + documents, with the query offset)
   skips invisible blocks. Grouped-query attention uses ``enable_gqa``.

Memory is O(Lq x R) per head for QP and its gradient, nothing L x L. That is fine for the
paper's small-scale presets (R ~ 730 for ``oka2025``, ~ 2.9k for ``oka2025-4k`` at any L) but
not for large scales: the ``long`` preset reaches R ~ 183k, i.e. every distance, where QP would
be L x L. **Documented rule:** the backend refuses (ValueError) when R > ``max_band``
(`FLEX_MAX_BAND` = 4096 by default), naming the alternatives; it never falls back silently.
So `long` runs here only while q_offset + Lq <= max_band; the fast path for large scales is the
``triton`` backend (`hf_wavepos.attention.triton`).

FlexAttention is compiled (``torch.compile``) on CUDA, which is where this backend registers
(`supports` is CUDA only). On CPU the function still runs the forward in eager mode (an
unfused reference implementation, for tests); PyTorch has no FlexAttention backward on CPU.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch

from hf_wavepos.attention.contract import AttentionCall, attention_call
from hf_wavepos.basis import skip_cutoff, table_support

FLEX_MAX_BAND = 4096
"""Largest band R (distances with a significant table row) the flex backend accepts."""

_band_cache: dict[tuple, tuple[weakref.ref, int]] = {}
_mask_cache: dict[tuple, tuple[tuple, object]] = {}
_CACHE_SIZE = 32


def _flex_module():
    from torch.nn.attention import flex_attention as flex

    return flex


@functools.lru_cache(maxsize=1)
def _compiled_flex_attention():
    return torch.compile(_flex_module().flex_attention, dynamic=False)


def flex_available() -> bool:
    """True when this torch has FlexAttention (torch >= 2.5)."""
    try:
        _flex_module()
    except ImportError:
        return False
    return True


def positional_band(table: torch.Tensor, rows: int, dtype: torch.dtype) -> int:
    """R: one more than the last distance < ``rows`` whose row of ``table`` matters (cached)."""
    cutoff = skip_cutoff(dtype)
    key = (table.data_ptr(), tuple(table.shape), table.dtype, table.device, table._version, rows, cutoff)
    hit = _band_cache.get(key)
    if hit is not None and hit[0]() is table:
        return hit[1]
    band = table_support(table[:rows], cutoff)
    if len(_band_cache) >= _CACHE_SIZE:
        _band_cache.pop(next(iter(_band_cache)))
    _band_cache[key] = (weakref.ref(table), band)
    return band


def _tensor_key(t: torch.Tensor | None):
    return None if t is None else (t.data_ptr(), tuple(t.shape), t.dtype, t._version)


def _block_mask(batch, q_len, k_len, q_offset, key_padding_mask, document_ids, attn_mask, device):
    """Causal (+ padding, documents, dense mask) BlockMask, queries at positions q_offset + i (cached)."""
    key = (batch, q_len, k_len, q_offset, str(device),
           *(_tensor_key(t) for t in (key_padding_mask, document_ids, attn_mask)))
    hit = _mask_cache.get(key)
    live = (key_padding_mask, document_ids, attn_mask)
    if hit is not None and all(a is b for a, b in zip(hit[0], live)):
        return hit[1]
    offset = torch.tensor(q_offset, device=device)

    def mask_mod(b, h, q_idx, kv_idx):
        m = q_idx + offset
        visible = kv_idx <= m
        if key_padding_mask is not None:
            visible = visible & key_padding_mask[b, kv_idx]
        if document_ids is not None:
            visible = visible & (document_ids[b, kv_idx] == document_ids[b, m])
        if dense is not None:
            visible = visible & dense[b, 0, q_idx, kv_idx]
        return visible

    dense = None if attn_mask is None else attn_mask.expand(batch, 1, q_len, k_len)
    per_batch = any(t is not None for t in live)
    block_mask = _flex_module().create_block_mask(
        mask_mod, batch if per_batch else None, None, q_len, k_len, device=device,
        _compile=device.type == "cuda",
    )
    if len(_mask_cache) >= _CACHE_SIZE:
        _mask_cache.pop(next(iter(_mask_cache)))
    _mask_cache[key] = (live, block_mask)
    return block_mask


def flex_backend(call: AttentionCall, max_band: int = FLEX_MAX_BAND) -> torch.Tensor:
    """Wavelet attention (Eq. 10) of one validated call through FlexAttention (module docstring).

    Args:
        call: the validated call; (B, H, Lq, D) in q's dtype comes back, rows that see no key zero.
        max_band: refuse when the table's band R exceeds it.

    Raises:
        ValueError: when the band R exceeds ``max_band`` (naming the backends that serve it).
    """
    q, Lq, off = call.q, call.q_len, call.q_offset
    if call.has_tensor_offset:  # traced static cache: the block mask is built per offset (a graph break)
        off = int(off)
    if Lq == 0:
        return q.new_zeros(q.shape)
    band = positional_band(call.table, call.rows, q.dtype)
    if band > max_band:
        raise ValueError(
            f"the flex backend adds q . p[r] from a (Lq, band) tensor, and this table's band is "
            f"{band} distances (> max_band={max_band}): large scales (e.g. the 'long' preset) "
            "reach every distance, so that tensor would be Lq x L. Use backend='triton' (the "
            "fast path for large scales) or 'chunked', or pass max_band >= "
            f"{band} to accept O(Lq x {band}) memory."
        )
    band = max(band, 1)
    qp = q @ call.table[:band].detach().to(q.dtype).T  # (B, H, Lq, band); gradient flows to q
    scale = call.scaling
    offset = torch.tensor(off, device=q.device)
    slopes = None if call.alibi_slopes is None else call.alibi_slopes.detach().to(torch.float32)

    def score_mod(score, b, h, q_idx, kv_idx):
        r = q_idx + offset - kv_idx  # the distance m - n
        in_band = (r >= 0) & (r < band)
        term = qp[b, h, q_idx, r.clamp(0, band - 1)].to(score.dtype) * scale
        score = score + torch.where(in_band, term, 0.0)
        if slopes is not None:
            score = score - (slopes[h] * r).to(score.dtype)
        return score

    block_mask = _block_mask(
        call.batch, Lq, call.k_len, off, call.key_padding_mask, call.document_ids, call.attn_mask, q.device
    )
    run = _compiled_flex_attention() if q.device.type == "cuda" else _flex_module().flex_attention
    return run(
        q, call.k, call.v, score_mod=score_mod, block_mask=block_mask, scale=scale,
        enable_gqa=call.kv_heads != call.heads,
    )


def flex_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, *,
    max_band: int = FLEX_MAX_BAND, **contract: Any,
) -> torch.Tensor:
    """The ``flex`` backend called directly: arguments, result and errors as
    `hf_wavepos.wavepos_attention` (the contract: `hf_wavepos.attention.contract.AttentionCall`),
    plus ``max_band`` of `flex_backend`."""
    return flex_backend(attention_call(q, k, v, table, **contract), max_band)
