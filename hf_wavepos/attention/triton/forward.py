"""Forward kernel: one program per (query block, batch x head); see the package docstring."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from hf_wavepos.attention.triton.tiles import (
    band_logits,
    load_kv_tile,
    mask_context,
    mask_logits,
    online_softmax_step,
    positional_block,
    query_tiles,
)

LOG2E = 1.4426950408889634


@triton.jit(do_not_specialize=["q_len", "k_len", "q_offset"])
def _fwd_kernel(
    Q, K, V, P, SUP_SORTED, ORDER, PAD, DOC, MASK, SLOPES, OUT, LSE,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
    stride_p, stride_padb, stride_docb, stride_mb, stride_mq, stride_mk,
    H, G, q_len, k_len, n_table_rows, head_dim, q_offset, qk_scale,
    HAS_PAD: tl.constexpr, HAS_DOC: tl.constexpr, HAS_MASK: tl.constexpr, HAS_ALIBI: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    kvh = h // G

    rows = pid_m * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) query rows
    row_ok = rows < q_len
    m_pos = q_offset + rows  # absolute query positions
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < head_dim
    offs_n = tl.arange(0, BLOCK)
    r64 = rows.to(tl.int64)

    q_rows = Q + b * stride_qb + h * stride_qh + r64 * stride_qm
    q = tl.load(q_rows[:, None] + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    pad_row, doc_row, mask_rows, q_doc, slope = mask_context(
        PAD, DOC, MASK, SLOPES, b, h, r64, m_pos, row_ok, stride_padb, stride_docb, stride_mb, stride_mq,
        HAS_DOC, HAS_ALIBI,
    )

    sup_sorted = tl.load(SUP_SORTED + tl.arange(0, N_CHUNKS))
    s_max, m0, n_tiles, t_band = query_tiles(q_offset, pid_m, k_len, sup_sorted, BLOCK)

    m_i = tl.full((BLOCK,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK,), dtype=tl.float32)
    acc = tl.zeros((BLOCK, BLOCK_D), dtype=tl.float32)

    # 1. Far tiles: content only (plain FlashAttention).
    for t in range(0, t_band):
        n_idx = t * BLOCK + offs_n
        k, v = load_kv_tile(k_base, v_base, n_idx, stride_kn, stride_vn, cols, col_ok[None, :])
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = mask_logits(s, m_pos, n_idx, k_len, row_ok, pad_row, doc_row, q_doc, mask_rows, stride_mk,
                        slope, False, HAS_PAD, HAS_DOC, HAS_MASK, HAS_ALIBI)
        m_i, l_i, acc = online_softmax_step(s, m_i, l_i, acc, v, DOT_PRECISION)

    # 2. Band tiles: + skewed q . p, the hi block of a tile is the lo block of the previous one.
    qp_hi = positional_block(
        q_rows, row_ok, P, stride_p, n_table_rows, m0 - t_band * BLOCK, sup_sorted, ORDER,
        head_dim, BLOCK, BLOCK, CHUNK, N_CHUNKS, DOT_PRECISION,
    )
    for t in range(t_band, n_tiles):
        n0 = t * BLOCK
        n_idx = n0 + offs_n
        kv_mask = (n_idx < k_len)[:, None] & col_ok[None, :]
        k, v = load_kv_tile(k_base, v_base, n_idx, stride_kn, stride_vn, cols, kv_mask)
        s, qp_hi = band_logits(q, k, q_rows, row_ok, P, stride_p, n_table_rows, m0 - n0 - BLOCK, qp_hi, sup_sorted,
                               ORDER, head_dim, qk_scale, BLOCK, CHUNK, N_CHUNKS, DOT_PRECISION)
        s = mask_logits(s, m_pos, n_idx, k_len, row_ok, pad_row, doc_row, q_doc, mask_rows, stride_mk,
                        slope, True, HAS_PAD, HAS_DOC, HAS_MASK, HAS_ALIBI)
        m_i, l_i, acc = online_softmax_step(s, m_i, l_i, acc, v, DOT_PRECISION)

    empty = l_i == 0.0  # rows that see no key: output 0, lse = +inf (zero gradient)
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    o_rows = OUT + b * stride_ob + h * stride_oh + r64 * stride_om
    tl.store(o_rows[:, None] + cols[None, :], out.to(OUT.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * q_len + rows, lse, mask=row_ok)


def dot_precision(dtype: torch.dtype) -> str:
    """float32 inputs use exact IEEE dots (as torch.matmul does by default), not TF32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def flags_or_dummy(mask: torch.Tensor | None, fallback: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Pointer argument and batch stride for an optional (B, Lk) tensor (bool -> uint8 view)."""
    if mask is None:
        return fallback, 0
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    mask = mask.contiguous()
    return mask, mask.stride(0)


@dataclass(frozen=True)
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
        """Args: (B, Lk) bool, (B, Lk) int, (B|1, 1, Lq, Lk) bool, (H,) float, each or None."""
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


def attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    sup_sorted: torch.Tensor, order: torch.Tensor, extras: Extras,
    scaling: float, q_offset: int, block: int, chunk: int, num_warps: int, num_stages: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Args:
        q: (B, H, Lq, D); k, v: (B, Hkv, Lk, D), last dim contiguous; table: (R, D) in q's dtype.
        sup_sorted, order: (n_chunks,) int32 from `support.chunk_supports`.
        extras: padding / documents / dense mask / ALiBi slopes (`Extras.of`).
        block: query and key tile size (power of two >= 16); chunk: columns per table chunk.

    Returns:
        out (B, H, Lq, D) in q's dtype and lse (B, H, Lq) float32 (base 2, +inf for empty rows).
    """
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    block_d = sup_sorted.numel() * chunk
    out = torch.empty_like(q)
    lse = torch.empty(B, H, Lq, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(Lq, block), B * H)
    _fwd_kernel[grid](
        q, k, v, table, sup_sorted, order, extras.pad, extras.doc, extras.mask, extras.slopes, out, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        table.stride(0), *extras.strides,
        H, H // Hkv, Lq, Lk, table.shape[0], D, q_offset, scaling * LOG2E,
        **extras.flags, BLOCK=block, BLOCK_D=block_d, CHUNK=chunk, N_CHUNKS=sup_sorted.numel(),
        DOT_PRECISION=dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )
    return out, lse
