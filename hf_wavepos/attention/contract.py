"""The attention contract: one validated call that every backend receives.

Every backend computes, for batch b, query head h (key/value head h // G with
G = H / Hkv), query row i at absolute position m = q_offset + i and key n:

    e[m, n] = ( q_m . k_n + q_m . p[m - n] ) * scaling                 (Eq. 10)
    out_m   = sum_n softmax_n(e[m, n]) v_n     over the keys n visible from m

A key is visible when n <= m (causal), ``key_padding_mask[b, n]`` is True (when given),
``document_ids[b, n] == document_ids[b, m]`` (when given: packed documents, no attention across
documents) and ``attn_mask[b, 0, i, n]`` is True (when given: any other visibility rule, e.g. the
4-D mask transformers builds; it costs O(Lq x Lk) memory like every dense mask).

Peer position methods share the contract: ``alibi_slopes`` (H,) adds -slope_h * (m - n) to the
logit (ALiBi, after scaling), and an all-zero table is NoPE (backends skip zero rows). Within one
document (or one left-padded sequence) the index difference m - n is the relative distance, so
positions never need to be passed. A query that sees no key at all (a padding row) gets an output
of zeros and no gradient.

`attention_call` validates the arguments once (ValueError naming the argument and the fix) and
returns an `AttentionCall`; `hf_wavepos.wavepos_attention` hands it to the chosen backend, whose
registered function is ``fn(call)``. The call is a plain dataclass of tensors and Python numbers
read from shapes (never from tensor values), so ``torch.compile`` traces it.

The query offset is a Python int, except while ``torch.compile`` traces a call whose offset is
a tensor (a static cache's length): it then stays a 0-d integer tensor, so that one graph serves
every decoding step. Such a call scores every key (Lk is the static cache's size), its table has
at least Lk rows, and backends compute it without reading the offset on the host
(`has_tensor_offset`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class AttentionCall:
    """One validated attention call (see the module docstring for the formula).

    Attributes:
        q: (B, H, Lq, D) queries, no rotary embedding applied.
        k, v: (B, Hkv, Lk, D) keys and values; H is a multiple of Hkv (grouped-query attention).
        table: (R, D) with R >= q_offset + Lq: row r is p[r] (`hf_wavepos.basis.wavelet_table`);
            fixed, it receives no gradient.
        scaling: logit scale (default 1/sqrt(D)).
        q_offset: absolute position of query 0, i.e. the number of cached keys before it;
            Lq = 1 with q_offset = Lk - 1 is one decoding step, Lk > q_offset + Lq a static cache.
            A 0-d int64 tensor only while ``torch.compile`` traces a tensor offset (module docstring).
        key_padding_mask: (B, Lk) bool, True for real tokens (left padding, static caches), or None.
        document_ids: (B, Lk) integers; queries attend only to keys of their own document, or None.
        attn_mask: (B|1, 1, Lq, Lk) bool, True where a key may be attended (AND with causal), or
            None; O(Lq x Lk) memory, so prefer the compact masks above where they suffice.
        alibi_slopes: (H,) float ALiBi slopes: adds -slope_h * (m - n) to the scaled logit, or None.
        batch, heads, kv_heads, q_len, k_len, head_dim: B, H, Hkv, Lq, Lk, D.

    Every backend returns (B, H, Lq, D) in q's dtype; rows that see no key are zero.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    table: torch.Tensor
    scaling: float
    q_offset: int | torch.Tensor
    key_padding_mask: torch.Tensor | None
    document_ids: torch.Tensor | None
    attn_mask: torch.Tensor | None
    alibi_slopes: torch.Tensor | None
    batch: int
    heads: int
    kv_heads: int
    q_len: int
    k_len: int
    head_dim: int

    @property
    def groups(self) -> int:
        """Query heads per key/value head, H // Hkv."""
        return self.heads // self.kv_heads

    @property
    def has_tensor_offset(self) -> bool:
        """True when q_offset is a tensor (traced static-cache step; see the module docstring)."""
        return isinstance(self.q_offset, torch.Tensor)

    @property
    def rows(self) -> int:
        """Table rows the call uses: distances 0 .. q_offset + Lq - 1 (with a tensor offset, the
        bound Lk, a shape)."""
        return self.k_len if self.has_tensor_offset else self.q_offset + self.q_len

    @property
    def rows_may_be_empty(self) -> bool:
        """True when a mask is given, so that some query may see no key at all."""
        return not (self.key_padding_mask is None and self.document_ids is None and self.attn_mask is None)

    def optional_inputs(self) -> tuple[str, ...]:
        """Names of the optional inputs a backend must implement for this call."""
        given = {"attn_mask": self.attn_mask, "alibi_slopes": self.alibi_slopes}
        return tuple(name for name, value in given.items() if value is not None)


def attention_call(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    *,
    scaling: float | None = None,
    q_offset: int | torch.Tensor = 0,
    key_padding_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    alibi_slopes: torch.Tensor | None = None,
) -> AttentionCall:
    """Validate one call's inputs and return them as an `AttentionCall` (its attributes document
    every argument; ``q_offset`` may also be a one-element tensor).

    Raises:
        ValueError: naming the argument and the fix, for wrong ranks, shapes, dtypes, devices,
            head counts, offsets past the keys, a table too short, or malformed masks and slopes.
    """
    B, H, Lq, D, Hkv, Lk = _check_qkv(q, k, v, table)
    q_offset = _static_offset(q_offset)
    _check_offset_and_table(q_offset, table, Lq, Lk, D)
    _check_masks(key_padding_mask, document_ids, attn_mask, alibi_slopes, B, H, Lq, Lk)
    if scaling is None:
        scaling = 1.0 / math.sqrt(D)
    return AttentionCall(
        q, k, v, table, float(scaling), q_offset, key_padding_mask, document_ids, attn_mask, alibi_slopes,
        B, H, Hkv, Lq, Lk, D,
    )


def _check_qkv(q, k, v, table) -> tuple[int, int, int, int, int, int]:
    """Ranks, shapes, dtypes and devices of q, k, v (and the table's device): B, H, Lq, D, Hkv, Lk."""
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
    return B, H, Lq, D, Hkv, Lk


def _static_offset(q_offset: int | torch.Tensor) -> int | torch.Tensor:
    """The query offset as a Python int (a one-element tensor is read once, here), or, while
    ``torch.compile`` traces, a tensor offset as a 0-d int64 tensor (never read on the host)."""
    if isinstance(q_offset, torch.Tensor):
        if q_offset.numel() != 1 or q_offset.is_floating_point() or q_offset.is_complex():
            raise ValueError(
                f"q_offset must be an integer scalar (one offset for the batch), got {q_offset.dtype} "
                f"of shape {tuple(q_offset.shape)}."
            )
        if torch.compiler.is_compiling():
            return q_offset.reshape(()).long()
        q_offset = int(q_offset.item())
    if isinstance(q_offset, bool) or not isinstance(q_offset, int) or q_offset < 0:
        raise ValueError(f"q_offset must be an integer >= 0 (cached tokens before the queries), got {q_offset!r}.")
    return q_offset


def _check_offset_and_table(q_offset: int | torch.Tensor, table: torch.Tensor, Lq: int, Lk: int, D: int) -> None:
    if table.dim() != 2 or table.shape[1] != D:
        raise ValueError(f"table must have shape (length, head_dim={D}), got {tuple(table.shape)}.")
    if isinstance(q_offset, torch.Tensor):  # traced: the bounds that hold for every offset
        if Lq > Lk or table.shape[0] < Lk:
            raise ValueError(
                f"with a tensor q_offset the queries ({Lq}) must fit in the keys ({Lk}) and the table "
                f"({table.shape[0]} rows) must cover every distance below the key length {Lk}; build it "
                f"with wavelet_table(config, head_dim, length>={Lk})."
            )
        return
    if q_offset + Lq > Lk:
        raise ValueError(
            f"q_offset + q_len = {q_offset} + {Lq} exceeds the key length {Lk}: the keys must include "
            "the queries' own positions (update the KV cache before attending)."
        )
    if table.shape[0] < q_offset + Lq:
        raise ValueError(
            f"table has {table.shape[0]} rows but distances up to {q_offset + Lq - 1} occur; build it "
            f"with wavelet_table(config, head_dim, length>={q_offset + Lq})."
        )


def _check_masks(key_padding_mask, document_ids, attn_mask, alibi_slopes, B, H, Lq, Lk) -> None:
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
