"""Triton device functions shared by the forward, backward and decoding kernels.

Notation (see the package docstring): a tile pairs BLOCK queries (rows i, absolute positions
m0 + i) with BLOCK keys (columns j, positions n0 + j); its distances are delta + i - j with
delta = m0 - n0. They fall in two aligned *distance blocks* of BLOCK rows of the table:
``hi`` = p[delta .. delta + BLOCK - 1] (entries with i >= j, at t = i - j) and
``lo`` = p[delta - BLOCK .. delta - 1] (entries with i < j, at t = BLOCK + i - j).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def positional_block(
    q_rows, row_ok, P, stride_p, n_table_rows, d_lo, sup_sorted, ORDER, head_dim,
    BLOCK_M: tl.constexpr, WIDTH: tl.constexpr, CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """QP[i, t] = q_i . p[d_lo + t] for t < WIDTH, over the column chunks that matter.

    q_rows: (BLOCK_M,) pointers to the first column of each query row; row_ok: (BLOCK_M,) bool.
    sup_sorted: (N_CHUNKS,) chunk supports in ascending order, ORDER their chunk indices.
    Chunks whose support is <= d_lo (all entries of the block below the cutoff) are skipped;
    distances outside [0, n_table_rows) read zeros. Returns (BLOCK_M, WIDTH) float32.
    """
    dist = d_lo + tl.arange(0, WIDTH)
    dist_ok = (dist >= 0) & (dist < n_table_rows)
    offs_c = tl.arange(0, CHUNK)
    first = tl.sum((sup_sorted <= d_lo).to(tl.int32), axis=0)
    first = tl.where(d_lo + WIDTH <= 0, N_CHUNKS, first)  # the whole block is in the future
    qp = tl.zeros((BLOCK_M, WIDTH), dtype=tl.float32)
    for ci in range(first, N_CHUNKS):
        c = tl.load(ORDER + ci)
        cols = c * CHUNK + offs_c
        col_ok = cols < head_dim
        qc = tl.load(q_rows[:, None] + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        pc = tl.load(
            P + dist[:, None].to(tl.int64) * stride_p + cols[None, :],
            mask=dist_ok[:, None] & col_ok[None, :], other=0.0,
        )
        qp = tl.dot(qc, tl.trans(pc), qp, input_precision=DOT_PRECISION)
    return qp


@triton.jit
def load_kv_tile(k_base, v_base, n_idx, stride_kn, stride_vn, cols, kv_mask):
    """K and V rows ``n_idx`` of one (batch, kv head): two (BLOCK, BLOCK_D) tiles, 0 where masked."""
    kv_off = n_idx[:, None].to(tl.int64)
    k = tl.load(k_base + kv_off * stride_kn + cols[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + kv_off * stride_vn + cols[None, :], mask=kv_mask, other=0.0)
    return k, v


@triton.jit
def mask_context(
    PAD, DOC, MASK, SLOPES, b, h, r64, m_pos, row_ok, stride_padb, stride_docb, stride_mb, stride_mq,
    HAS_DOC: tl.constexpr, HAS_ALIBI: tl.constexpr,
):
    """What `mask_logits` needs for a query block: ``(pad_row, doc_row, mask_rows, q_doc, slope)``,
    i.e. the batch row pointers of the padding / document / dense masks, the queries' document
    ids (their positions when there are no documents) and the head's ALiBi slope (0 without)."""
    pad_row = PAD + b * stride_padb
    doc_row = DOC + b * stride_docb
    mask_rows = MASK + b * stride_mb + r64 * stride_mq
    q_doc = m_pos
    if HAS_DOC:
        q_doc = tl.load(doc_row + m_pos, mask=row_ok, other=0)
    slope = 0.0
    if HAS_ALIBI:
        slope = tl.load(SLOPES + h)
    return pad_row, doc_row, mask_rows, q_doc, slope


@triton.jit
def query_tiles(q_offset, pid_m, k_len, sup_sorted, BLOCK: tl.constexpr):
    """Key tiles of a query block: ``(s_max, m0, n_tiles, t_band)``.

    Distances >= s_max (the largest chunk support) carry no positional term; tiles t < t_band
    have every distance >= s_max (they lie left of the diagonal), tiles t_band .. n_tiles - 1
    are the band (diagonal included); later tiles are in the causal future.
    """
    s_max = tl.max(sup_sorted, axis=0)
    m0 = q_offset + pid_m * BLOCK
    n_tiles = tl.cdiv(tl.minimum(k_len, m0 + BLOCK), BLOCK)
    t_band = tl.minimum(tl.cdiv(tl.maximum(m0 - s_max - BLOCK + 2, 0), BLOCK), n_tiles)
    return s_max, m0, n_tiles, t_band


@triton.jit
def band_logits(
    q, k, q_rows, row_ok, P, stride_p, n_table_rows, d_lo, qp_hi, sup_sorted, ORDER, head_dim, qk_scale,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Scaled logits (q.k + q.p[m - n]) * qk_scale of a band tile (Eq. 10), before masking.

    ``qp_hi`` is the tile's hi block (the previous tile's lo block); ``d_lo`` = delta - BLOCK is
    the first distance of its lo block. Returns ``(s, qp_lo)``: (BLOCK, BLOCK) float32 logits and
    the lo block, which is the next tile's hi block.
    """
    qp_lo = positional_block(
        q_rows, row_ok, P, stride_p, n_table_rows, d_lo, sup_sorted, ORDER,
        head_dim, BLOCK, BLOCK, CHUNK, N_CHUNKS, DOT_PRECISION,
    )
    s = (tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) + skew(qp_hi, qp_lo, BLOCK)) * qk_scale
    return s, qp_lo


@triton.jit
def skew(qp_hi, qp_lo, BLOCK: tl.constexpr):
    """The tile's positional logits: [i, j] = q_i . p[delta + i - j] from the hi/lo blocks."""
    i = tl.arange(0, BLOCK)[:, None]
    j = tl.arange(0, BLOCK)[None, :]
    idx = (i - j + BLOCK) % BLOCK  # t = i - j (hi) or BLOCK + i - j (lo)
    from_hi = tl.gather(qp_hi, idx, axis=1)
    from_lo = tl.gather(qp_lo, idx, axis=1)
    return tl.where(i >= j, from_hi, from_lo)


@triton.jit
def unskew(ds, BLOCK: tl.constexpr):
    """Inverse of `skew` for gradients: returns (g_hi, g_lo), each (BLOCK, BLOCK).

    g_hi[i, t] = ds[i, i - t] (t <= i) and g_lo[i, t] = ds[i, BLOCK + i - t] (t > i), so that
    sum_j ds[i, j] p[delta + i - j] = g_hi @ p[hi block] + g_lo @ p[lo block].
    """
    i = tl.arange(0, BLOCK)[:, None]
    t = tl.arange(0, BLOCK)[None, :]
    g = tl.gather(ds, (i - t + BLOCK) % BLOCK, axis=1)
    return tl.where(i >= t, g, 0.0), tl.where(i < t, g, 0.0)


@triton.jit
def positional_grad(
    g, P, stride_p, n_table_rows, d_lo, SUP_CHUNK, s_max, head_dim, dq,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dq + g @ p[d_lo .. d_lo + BLOCK - 1] (columns of chunks beyond their support read 0).

    g: (BLOCK, BLOCK) float32 gradient of the block's QP; dq: (BLOCK, BLOCK_D) float32.
    """
    if d_lo < s_max:
        dist = d_lo + tl.arange(0, BLOCK)
        dist_ok = (dist >= 0) & (dist < n_table_rows)
        cols = tl.arange(0, BLOCK_D)
        sup_col = tl.load(SUP_CHUNK + cols // CHUNK)
        col_ok = (cols < head_dim) & (sup_col > d_lo)
        p = tl.load(
            P + dist[:, None].to(tl.int64) * stride_p + cols[None, :],
            mask=dist_ok[:, None] & col_ok[None, :], other=0.0,
        )
        dq = tl.dot(g.to(p.dtype), p, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def mask_logits(
    s, m_pos, n_idx, k_len, row_ok, PAD_ROW, DOC_ROW, q_doc, mask_rows, stride_mask_n, slope,
    CAUSAL: tl.constexpr, HAS_PAD: tl.constexpr, HAS_DOC: tl.constexpr, HAS_MASK: tl.constexpr,
    HAS_ALIBI: tl.constexpr,
):
    """Base-2 logits s (BLOCK_M, BLOCK_N) + ALiBi, with every invisible entry set to -inf.

    The contract's visibility rule: n < k_len, n <= m (when CAUSAL; False for tiles known to lie
    left of the diagonal), PAD_ROW[n] != 0 (HAS_PAD), DOC_ROW[n] == q_doc (HAS_DOC) and
    mask_rows[i][n * stride_mask_n] != 0 (HAS_MASK: the dense attn_mask rows of the queries).
    m_pos: (BLOCK_M,) query positions; n_idx: (BLOCK_N,) key positions; row_ok: (BLOCK_M,).
    slope: ALiBi slope(s) in base-2 units, a scalar or (BLOCK_M, 1): adds -slope * (m - n).
    """
    n_ok = n_idx < k_len
    vis = n_ok[None, :]
    if CAUSAL:
        vis = vis & (n_idx[None, :] <= m_pos[:, None])
    if HAS_PAD:
        keep = tl.load(PAD_ROW + n_idx, mask=n_ok, other=0)
        vis = vis & (keep != 0)[None, :]
    if HAS_DOC:
        key_doc = tl.load(DOC_ROW + n_idx, mask=n_ok, other=0)
        vis = vis & (q_doc[:, None] == key_doc[None, :])
    if HAS_MASK:
        allowed = tl.load(
            mask_rows[:, None] + n_idx[None, :].to(tl.int64) * stride_mask_n,
            mask=row_ok[:, None] & n_ok[None, :], other=0,
        )
        vis = vis & (allowed != 0)
    if HAS_ALIBI:
        s = s - slope * (m_pos[:, None] - n_idx[None, :]).to(tl.float32)
    return tl.where(vis, s, float("-inf"))


@triton.jit
def online_softmax_step(s, m_i, l_i, acc, v, DOT_PRECISION: tl.constexpr):
    """One FlashAttention update with masked base-2 logits s (BLOCK_M, BLOCK_N); empty rows stay 0."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return m_new, l_i, acc
