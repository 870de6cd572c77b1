"""Forward kernel: one program per (query block, batch x head); see the package docstring."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from hf_wavepos.attention.triton.configs import TileConfig, dot_precision
from hf_wavepos.attention.triton.launch import LOG2E, Extras, Launch, dense, row_strides
from hf_wavepos.attention.triton.tiles import (
    band_logits,
    load_kv_tile,
    mask_context,
    mask_logits,
    online_softmax_step,
    positional_block,
    query_tiles,
)


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
    # One axis (CUDA caps axes 1 and 2 at 65535): query blocks of one (batch, head) are
    # consecutive, the longest (last, under the causal mask) first.
    n_m = tl.cdiv(q_len, BLOCK)
    pid = tl.program_id(0)
    pid_bh = pid // n_m
    pid_m = n_m - 1 - pid % n_m
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
        kv_mask = (n_idx < k_len)[:, None] & col_ok[None, :]
        k, v = load_kv_tile(k_base, v_base, n_idx, stride_kn, stride_vn, cols, kv_mask)
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


def forward_launches(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    sup_sorted: torch.Tensor, order: torch.Tensor, extras: Extras,
    scaling: float, q_offset: int, tile: TileConfig, chunk: int,
) -> tuple[list[Launch], torch.Tensor, torch.Tensor]:
    """The forward launch and its outputs (allocated, not yet written).

    Args:
        q: (B, H, Lq, D); k, v: (B, Hkv, Lk, D); any strides with a unit last one
            (`launch.rows_contiguous`); table: (R, D) contiguous, in q's dtype.
        sup_sorted, order: (n_chunks,) int32 from `support.chunk_supports`.
        extras: padding / documents / dense mask / ALiBi slopes (`launch.Extras.of`).
        tile: the forward's `configs.TileConfig`; chunk: columns per table chunk.

    Returns:
        ([launch], out, lse): out (B, H, Lq, D) dense in q's dtype, lse (B, H, Lq) float32
        (base 2, +inf for rows that see no key).
    """
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    block = tile.block
    out = dense(q.shape, q.dtype, q.device)
    lse = dense((B, H, Lq), torch.float32, q.device)
    launch = Launch(_fwd_kernel, (triton.cdiv(Lq, block) * B * H,), (
        q, k, v, table, sup_sorted, order, extras.pad, extras.doc, extras.mask, extras.slopes, out, lse,
        *row_strides(q), *row_strides(k), *row_strides(v), *row_strides(out),
        table.stride(0), *extras.strides,
        H, H // Hkv, Lq, Lk, table.shape[0], D, q_offset, scaling * LOG2E,
    ), dict(
        **extras.flags, BLOCK=block, BLOCK_D=sup_sorted.numel() * chunk, CHUNK=chunk, N_CHUNKS=sup_sorted.numel(),
        DOT_PRECISION=dot_precision(q.dtype), num_warps=tile.num_warps, num_stages=tile.num_stages,
    ))
    return [launch], out, lse
