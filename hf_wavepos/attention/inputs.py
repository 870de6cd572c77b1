"""Input contract shared by every attention backend, and the visibility rule.

Every backend computes, for batch b, query head h (key/value head h // G with
G = H / Hkv), query row i at absolute position m = q_offset + i and key n:

    e[m, n] = ( q_m . k_n + q_m . p[m - n] ) * scaling                 (Eq. 10)
    out_m   = sum_n softmax_n(e[m, n]) v_n     over the keys n visible from m

A key is visible when n <= m (causal), ``key_padding_mask[b, n]`` is True (when given),
``document_ids[b, n] == document_ids[b, m]`` (when given: packed documents, no attention across
documents) and ``attn_mask[b, 0, i, n]`` is True (when given: any other visibility rule, e.g. the
4-D mask transformers builds; it costs O(Lq x Lk) memory like every dense mask).

Peer position methods share the contract: ``alibi_slopes`` (H,) adds -slope_h * (m - n) to the
logit (ALiBi, after scaling), and an all-zero table is NoPE (backends skip zero rows). Within one document (or one left-padded sequence) the index difference m - n is the
relative distance, so positions never need to be passed. A query that sees no key at all (a
padding row) gets an output of zeros and no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionShape:
    """Sizes of one call: q (B, H, Lq, D), k/v (B, Hkv, Lk, D), ``groups`` = H // Hkv."""

    batch: int
    heads: int
    kv_heads: int
    q_len: int
    k_len: int
    head_dim: int
    q_offset: int
    scaling: float

    @property
    def groups(self) -> int:
        return self.heads // self.kv_heads


def check_attention_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    *,
    scaling: float | None,
    q_offset: int | torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    document_ids: torch.Tensor | None,
    attn_mask: torch.Tensor | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> AttentionShape:
    """Validate one call's inputs; raise ValueError naming the argument and the fix."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "q, k and v must be 4-D (batch, heads, length, head_dim); got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}."
        )
    B, H, Lq, D = q.shape
    Bk, Hkv, Lk, Dk = k.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}.")
    if Bk != B or Dk != D:
        raise ValueError(
            f"k/v batch and head_dim must match q: q is {tuple(q.shape)}, k is {tuple(k.shape)}."
        )
    if Hkv == 0 or H % Hkv:
        raise ValueError(
            f"query heads ({H}) must be a multiple of key/value heads ({Hkv}) for grouped-query attention."
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}.")
    if not (q.device == k.device == v.device == table.device):
        raise ValueError(
            f"q, k, v and table must be on one device, got {q.device}, {k.device}, {v.device}, {table.device}."
        )
    if isinstance(q_offset, torch.Tensor):
        if q_offset.numel() != 1:
            raise ValueError(f"q_offset must be a scalar (one offset for the batch), got shape {tuple(q_offset.shape)}.")
        q_offset = int(q_offset.item())
    if isinstance(q_offset, bool) or not isinstance(q_offset, int) or q_offset < 0:
        raise ValueError(f"q_offset must be an integer >= 0 (cached tokens before the queries), got {q_offset!r}.")
    if q_offset + Lq > Lk:
        raise ValueError(
            f"q_offset + q_len = {q_offset} + {Lq} exceeds the key length {Lk}: the keys must include "
            "the queries' own positions (update the KV cache before attending)."
        )
    if table.dim() != 2 or table.shape[1] != D:
        raise ValueError(f"table must have shape (length, head_dim={D}), got {tuple(table.shape)}.")
    if table.shape[0] < q_offset + Lq:
        raise ValueError(
            f"table has {table.shape[0]} rows but distances up to {q_offset + Lq - 1} occur; build it "
            f"with wavelet_table(config, head_dim, length>={q_offset + Lq})."
        )
    if key_padding_mask is not None:
        if key_padding_mask.shape != (B, Lk) or key_padding_mask.dtype != torch.bool:
            raise ValueError(
                f"key_padding_mask must be a bool tensor of shape (batch, k_len) = ({B}, {Lk}) with "
                f"True for real tokens, got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}."
            )
    if document_ids is not None:
        if document_ids.shape != (B, Lk) or document_ids.is_floating_point():
            raise ValueError(
                f"document_ids must be an integer tensor of shape (batch, k_len) = ({B}, {Lk}), got "
                f"{document_ids.dtype} {tuple(document_ids.shape)}."
            )
    if attn_mask is not None:
        if (
            attn_mask.dtype != torch.bool
            or attn_mask.dim() != 4
            or attn_mask.shape[0] not in (1, B)
            or attn_mask.shape[1] != 1
            or attn_mask.shape[2:] != (Lq, Lk)
        ):
            raise ValueError(
                f"attn_mask must be a bool tensor of shape (batch or 1, 1, q_len, k_len) = ({B}, 1, {Lq}, {Lk}) "
                f"with True where a key may be attended, got {attn_mask.dtype} {tuple(attn_mask.shape)}."
            )
    if alibi_slopes is not None and (alibi_slopes.shape != (H,) or not alibi_slopes.is_floating_point()):
        raise ValueError(
            f"alibi_slopes must be a float tensor of shape (heads,) = ({H},), got "
            f"{alibi_slopes.dtype} {tuple(alibi_slopes.shape)}."
        )
    if scaling is None:
        scaling = 1.0 / math.sqrt(D)
    return AttentionShape(B, H, Hkv, Lq, Lk, D, q_offset, float(scaling))


def visible_keys(
    q_positions: torch.Tensor,
    k_len: int,
    key_padding_mask: torch.Tensor | None,
    document_ids: torch.Tensor | None,
    attn_mask_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which keys each query may attend to.

    Args:
        q_positions: (c,) absolute positions m of the queries (key indices of the queries).
        k_len: keys 0 .. k_len-1 are considered.
        key_padding_mask: (B, >=k_len) bool or None.
        document_ids: (B, >=k_len) int or None.
        attn_mask_rows: (B|1, 1, c, >=k_len) bool or None: the rows of ``attn_mask`` of these queries.

    Returns:
        bool tensor broadcastable to (B, 1, c, k_len): (B or 1, 1, c, k_len).
    """
    n = torch.arange(k_len, device=q_positions.device)
    visible = (n[None, :] <= q_positions[:, None])[None, None]  # (1, 1, c, k_len)
    if key_padding_mask is not None:
        visible = visible & key_padding_mask[:, None, None, :k_len]
    if document_ids is not None:
        q_docs = document_ids[:, q_positions]  # (B, c)
        visible = visible & (q_docs[:, None, :, None] == document_ids[:, None, None, :k_len])
    if attn_mask_rows is not None:
        visible = visible & attn_mask_rows[..., :k_len]
    return visible


def alibi_bias(q_positions: torch.Tensor, k_len: int, slopes: torch.Tensor) -> torch.Tensor:
    """ALiBi's logit term -slope_h * (m - n), shape (H, c, k_len), float32 (or slopes' dtype)."""
    n = torch.arange(k_len, device=q_positions.device)
    distance = (q_positions[:, None] - n[None, :]).to(slopes.dtype)  # (c, k_len)
    return -slopes[:, None, None] * distance
