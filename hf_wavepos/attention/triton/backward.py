"""Backward kernels: delta = rowsum(dO * O), dq (query-block major), dk/dv (key-block major).

Both recompute the logits from q, k, the table and the saved base-2 log-sum-exp, as
FlashAttention-2 does; nothing of size L x L is stored. See the package docstring.
"""

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
    positional_block,
    positional_grad,
    query_tiles,
    skew,
    unskew,
)


@triton.jit
def _delta_kernel(
    OUT, DO, DELTA, stride_ob, stride_oh, stride_om, stride_db, stride_dh, stride_dm,
    H, q_len, head_dim, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr,
):
    n_m = tl.cdiv(q_len, BLOCK)
    pid = tl.program_id(0)
    pid_bh = pid // n_m
    pid_m = pid % n_m
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    rows = pid_m * BLOCK + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows < q_len)[:, None] & (cols < head_dim)[None, :]
    r64 = rows.to(tl.int64)[:, None]
    o = tl.load(OUT + b * stride_ob + h * stride_oh + r64 * stride_om + cols[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b * stride_db + h * stride_dh + r64 * stride_dm + cols[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + pid_bh.to(tl.int64) * q_len + rows, delta, mask=rows < q_len)


@triton.jit
def _dlogits(s, lse, delta, do, v, DOT_PRECISION: tl.constexpr):
    """Recomputed P = exp2(s - lse) (masked entries of s are -inf) and dS = P * (dO V^T - delta)."""
    p = tl.exp2(s - lse[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    return p, p * (dp - delta[:, None])


@triton.jit(do_not_specialize=["q_len", "k_len", "q_offset"])
def _bwd_dq_kernel(
    Q, K, V, P, SUP_SORTED, SUP_CHUNK, ORDER, PAD, DOC, MASK, SLOPES, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dm,
    stride_p, stride_padb, stride_docb, stride_mb, stride_mq, stride_mk,
    stride_dqb, stride_dqh, stride_dqm,
    H, G, q_len, k_len, n_table_rows, head_dim, q_offset, qk_scale, scaling,
    HAS_PAD: tl.constexpr, HAS_DOC: tl.constexpr, HAS_MASK: tl.constexpr, HAS_ALIBI: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    n_m = tl.cdiv(q_len, BLOCK)  # one grid axis, the longest query blocks first (as the forward)
    pid = tl.program_id(0)
    pid_bh = pid // n_m
    pid_m = n_m - 1 - pid % n_m
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    kvh = h // G

    rows = pid_m * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < q_len
    m_pos = q_offset + rows
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < head_dim
    qd_mask = row_ok[:, None] & col_ok[None, :]
    offs_n = tl.arange(0, BLOCK)
    r64 = rows.to(tl.int64)

    q_rows = Q + b * stride_qb + h * stride_qh + r64 * stride_qm
    q = tl.load(q_rows[:, None] + cols[None, :], mask=qd_mask, other=0.0)
    do = tl.load(DO + b * stride_db + h * stride_dh + r64[:, None] * stride_dm + cols[None, :], mask=qd_mask, other=0.0)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * q_len + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * q_len + rows, mask=row_ok, other=0.0)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    pad_row, doc_row, mask_rows, q_doc, slope = mask_context(
        PAD, DOC, MASK, SLOPES, b, h, r64, m_pos, row_ok, stride_padb, stride_docb, stride_mb, stride_mq,
        HAS_DOC, HAS_ALIBI,
    )

    sup_sorted = tl.load(SUP_SORTED + tl.arange(0, N_CHUNKS))
    s_max, m0, n_tiles, t_band = query_tiles(q_offset, pid_m, k_len, sup_sorted, BLOCK)
    dq = tl.zeros((BLOCK, BLOCK_D), dtype=tl.float32)

    for t in range(0, t_band):  # far tiles: content only
        n_idx = t * BLOCK + offs_n
        kv_mask = (n_idx < k_len)[:, None] & col_ok[None, :]
        k, v = load_kv_tile(k_base, v_base, n_idx, stride_kn, stride_vn, cols, kv_mask)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = mask_logits(s, m_pos, n_idx, k_len, row_ok, pad_row, doc_row, q_doc, mask_rows, stride_mk,
                        slope, False, HAS_PAD, HAS_DOC, HAS_MASK, HAS_ALIBI)
        p, ds = _dlogits(s, lse, delta, do, v, DOT_PRECISION)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)

    qp_hi = positional_block(
        q_rows, row_ok, P, stride_p, n_table_rows, m0 - t_band * BLOCK, sup_sorted, ORDER,
        head_dim, BLOCK, BLOCK, CHUNK, N_CHUNKS, DOT_PRECISION,
    )
    g_carry = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)  # gradient of the pending lo block
    for t in range(t_band, n_tiles):  # band tiles
        n0 = t * BLOCK
        n_idx = n0 + offs_n
        kv_mask = (n_idx < k_len)[:, None] & col_ok[None, :]
        k, v = load_kv_tile(k_base, v_base, n_idx, stride_kn, stride_vn, cols, kv_mask)
        s, qp_hi = band_logits(q, k, q_rows, row_ok, P, stride_p, n_table_rows, m0 - n0 - BLOCK, qp_hi, sup_sorted,
                               ORDER, head_dim, qk_scale, BLOCK, CHUNK, N_CHUNKS, DOT_PRECISION)
        s = mask_logits(s, m_pos, n_idx, k_len, row_ok, pad_row, doc_row, q_doc, mask_rows, stride_mk,
                        slope, True, HAS_PAD, HAS_DOC, HAS_MASK, HAS_ALIBI)
        p, ds = _dlogits(s, lse, delta, do, v, DOT_PRECISION)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
        g_hi, g_lo = unskew(ds, BLOCK)
        # The hi block of this tile is complete (it was the lo block of the previous tile).
        dq = positional_grad(
            g_carry + g_hi, P, stride_p, n_table_rows, m0 - n0, SUP_CHUNK, s_max, head_dim, dq,
            BLOCK, BLOCK_D, CHUNK, DOT_PRECISION,
        )
        g_carry = g_lo
    dq = positional_grad(
        g_carry, P, stride_p, n_table_rows, m0 - n_tiles * BLOCK, SUP_CHUNK, s_max, head_dim, dq,
        BLOCK, BLOCK_D, CHUNK, DOT_PRECISION,
    )
    dq = dq * scaling
    tl.store(DQ + b * stride_dqb + h * stride_dqh + r64[:, None] * stride_dqm + cols[None, :],
             dq.to(DQ.dtype.element_ty), mask=qd_mask)


@triton.jit(do_not_specialize=["q_len", "k_len", "q_offset"])
def _bwd_dkdv_kernel(
    Q, K, V, P, SUP_SORTED, ORDER, PAD, DOC, MASK, SLOPES, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_db, stride_dh, stride_dm,
    stride_p, stride_padb, stride_docb, stride_mb, stride_mq, stride_mk,
    stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    H, Hkv, G, q_len, k_len, n_table_rows, head_dim, q_offset, qk_scale, scaling,
    HAS_PAD: tl.constexpr, HAS_DOC: tl.constexpr, HAS_MASK: tl.constexpr, HAS_ALIBI: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    n_n = tl.cdiv(k_len, BLOCK)  # one grid axis; the first key blocks (most queries) first
    pid = tl.program_id(0)
    pid_bkv = pid // n_n
    pid_n = pid % n_n
    b = (pid_bkv // Hkv).to(tl.int64)
    kvh = (pid_bkv % Hkv).to(tl.int64)

    n0 = pid_n * BLOCK
    n_idx = n0 + tl.arange(0, BLOCK)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < head_dim
    kv_mask = (n_idx < k_len)[:, None] & col_ok[None, :]
    k, v = load_kv_tile(K + b * stride_kb + kvh * stride_kh, V + b * stride_vb + kvh * stride_vh, n_idx,
                        stride_kn, stride_vn, cols, kv_mask)
    kv_off = n_idx[:, None].to(tl.int64)
    pad_row = PAD + b * stride_padb
    doc_row = DOC + b * stride_docb

    sup_sorted = tl.load(SUP_SORTED + tl.arange(0, N_CHUNKS))
    s_max = tl.max(sup_sorted, axis=0)
    n_qblocks = tl.cdiv(q_len, BLOCK)
    qb_first = tl.minimum(tl.maximum(n0 - q_offset, 0) // BLOCK, n_qblocks)  # first block with m >= n0
    # Query blocks with some distance < s_max (this includes the diagonal ones).
    qb_band_end = tl.cdiv(tl.maximum(n0 + BLOCK - 1 + s_max - q_offset, 0), BLOCK)

    dk = tl.zeros((BLOCK, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK, BLOCK_D), dtype=tl.float32)
    offs_m = tl.arange(0, BLOCK)
    for g in range(0, G):
        h = kvh * G + g
        bh = b * H + h
        q_head = Q + b * stride_qb + h * stride_qh
        do_head = DO + b * stride_db + h * stride_dh
        slope = 0.0
        if HAS_ALIBI:
            slope = tl.load(SLOPES + h)
        for qb in range(qb_first, n_qblocks):
            rows = qb * BLOCK + offs_m
            row_ok = rows < q_len
            m_pos = q_offset + rows
            r64 = rows.to(tl.int64)
            qd_mask = row_ok[:, None] & col_ok[None, :]
            q_rows = q_head + r64 * stride_qm
            q = tl.load(q_rows[:, None] + cols[None, :], mask=qd_mask, other=0.0)
            do = tl.load(do_head + r64[:, None] * stride_dm + cols[None, :], mask=qd_mask, other=0.0)
            lse = tl.load(LSE + bh * q_len + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + bh * q_len + rows, mask=row_ok, other=0.0)
            q_doc = m_pos
            if HAS_DOC:
                q_doc = tl.load(doc_row + m_pos, mask=row_ok, other=0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
            if qb < qb_band_end:  # positional term (and the causal diagonal) live here
                d_tile = q_offset + qb * BLOCK - n0
                qp_hi = positional_block(
                    q_rows, row_ok, P, stride_p, n_table_rows, d_tile, sup_sorted, ORDER,
                    head_dim, BLOCK, BLOCK, CHUNK, N_CHUNKS, DOT_PRECISION,
                )
                qp_lo = positional_block(
                    q_rows, row_ok, P, stride_p, n_table_rows, d_tile - BLOCK, sup_sorted, ORDER,
                    head_dim, BLOCK, BLOCK, CHUNK, N_CHUNKS, DOT_PRECISION,
                )
                s = s + skew(qp_hi, qp_lo, BLOCK)
            mask_rows = MASK + b * stride_mb + r64 * stride_mq
            s = mask_logits(s * qk_scale, m_pos, n_idx, k_len, row_ok, pad_row, doc_row, q_doc, mask_rows,
                            stride_mk, slope, True, HAS_PAD, HAS_DOC, HAS_MASK, HAS_ALIBI)
            p, ds = _dlogits(s, lse, delta, do, v, DOT_PRECISION)
            dv = tl.dot(tl.trans(p).to(do.dtype), do, dv, input_precision=DOT_PRECISION)
            dk = tl.dot(tl.trans(ds).to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    dk = dk * scaling
    dk_ptrs = DK + b * stride_dkb + kvh * stride_dkh + kv_off * stride_dkn + cols[None, :]
    dv_ptrs = DV + b * stride_dvb + kvh * stride_dvh + kv_off * stride_dvn + cols[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=kv_mask)


def backward_launches(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, table: torch.Tensor, sup_sorted: torch.Tensor, sup_chunk: torch.Tensor,
    order: torch.Tensor, extras: Extras, scaling: float, q_offset: int,
    tile_dq: TileConfig, tile_dkdv: TileConfig, chunk: int,
) -> tuple[list[Launch], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward launches (delta, dq, dk/dv, in that order) and the gradients they write.

    Shapes and layouts as in `forward.forward_launches`; grad_out and out are (B, H, Lq, D) with
    a unit last stride, lse (B, H, Lq) float32 from the forward. dk and dv are summed over the
    G query heads of each key/value head inside one program.

    Returns:
        (launches, dq, dk, dv): the gradients dense (row-major), shaped like q, k, v; each kernel
        writes them with their own strides, whatever the strides of q, k, v.
    """
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    block_d = sup_sorted.numel() * chunk
    delta = dense((B, H, Lq), torch.float32, q.device)
    dq = dense(q.shape, q.dtype, q.device)
    dk = dense(k.shape, k.dtype, k.device)
    dv = dense(v.shape, v.dtype, v.device)
    launches = [Launch(_delta_kernel, (triton.cdiv(Lq, tile_dq.block) * B * H,), (
        out, grad_out, delta, *row_strides(out), *row_strides(grad_out), H, Lq, D,
    ), dict(BLOCK=tile_dq.block, BLOCK_D=block_d, num_warps=4))]
    strides = (
        *row_strides(q), *row_strides(k), *row_strides(v), *row_strides(grad_out),
        table.stride(0), *extras.strides,
    )
    ex = (extras.pad, extras.doc, extras.mask, extras.slopes)
    common = dict(**extras.flags, BLOCK_D=block_d, CHUNK=chunk, N_CHUNKS=sup_sorted.numel(),
                  DOT_PRECISION=dot_precision(q.dtype))
    launches.append(Launch(_bwd_dq_kernel, (triton.cdiv(Lq, tile_dq.block) * B * H,), (
        q, k, v, table, sup_sorted, sup_chunk, order, *ex, grad_out, lse, delta, dq, *strides, *row_strides(dq),
        H, H // Hkv, Lq, Lk, table.shape[0], D, q_offset, scaling * LOG2E, scaling,
    ), dict(common, BLOCK=tile_dq.block, num_warps=tile_dq.num_warps, num_stages=tile_dq.num_stages)))
    launches.append(Launch(_bwd_dkdv_kernel, (triton.cdiv(Lk, tile_dkdv.block) * B * Hkv,), (
        q, k, v, table, sup_sorted, order, *ex, grad_out, lse, delta, dk, dv, *strides,
        *row_strides(dk), *row_strides(dv),
        H, Hkv, H // Hkv, Lq, Lk, table.shape[0], D, q_offset, scaling * LOG2E, scaling,
    ), dict(common, BLOCK=tile_dkdv.block, num_warps=tile_dkdv.num_warps, num_stages=tile_dkdv.num_stages)))
    return launches, dq, dk, dv
