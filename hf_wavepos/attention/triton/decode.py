"""Decoding kernels: a few queries over a long KV cache (split-K + combine), no autograd.

One program serves all G query heads of one key/value head (so each key and value is read
once) for one slice of the cache; its rows are the (head, query) pairs r = g * Lq + i. With
few queries the carried hi/lo blocks of the prefill kernels do not apply; instead each key
tile of BLOCK_N keys uses one *window* of WINDOW >= BLOCK_N + Lq - 1 distances starting at
w0 = q_offset - n0 - (BLOCK_N - 1): QP = Q @ p[w0 .. w0 + WINDOW - 1]^T (chunks beyond their
support skipped, the whole window skipped past the table's support), and the logit of row
(g, i) and key n0 + j is QP[r, i + BLOCK_N - 1 - j], one `tl.gather`. Decoding is memory
bound, so the window's extra columns cost little; the table rows are shared by every head
and stay in L2. A second kernel merges the slices' (max, sum, accumulator) triples, COMBINE_SPLITS
slices at a time (an online merge, so its tile does not grow with the number of slices).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from hf_wavepos.attention.triton.configs import MAX_SPLITS, TileConfig, dot_precision
from hf_wavepos.attention.triton.launch import LOG2E, Extras, Launch, dense, row_strides
from hf_wavepos.attention.triton.support import next_power_of_2
from hf_wavepos.attention.triton.tiles import mask_logits, online_softmax_step, positional_block


@triton.jit(do_not_specialize=["q_len", "k_len", "n_table_rows", "q_offset", "keys_per_split"])
def _decode_split_kernel(
    Q, K, V, P, SUP_SORTED, ORDER, PAD, DOC, MASK, SLOPES, OPART, MPART, LPART,
    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_p, stride_padb, stride_docb,
    stride_mb, stride_mq, stride_mk,
    Hkv, G, q_len, k_len, n_table_rows, head_dim, q_offset, qk_scale, keys_per_split, n_bkv,
    HAS_PAD: tl.constexpr, HAS_DOC: tl.constexpr, HAS_MASK: tl.constexpr, HAS_ALIBI: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    WINDOW: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, N_CHUNKS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_bkv = tl.program_id(0)  # B x Hkv on the axis without CUDA's 65535 cap
    split = tl.program_id(1)
    b = (pid_bkv // Hkv).to(tl.int64)
    kvh = (pid_bkv % Hkv).to(tl.int64)

    r = tl.arange(0, BLOCK_M)
    row_ok = r < G * q_len
    i = r % q_len  # query index of the row
    h = kvh * G + (r // q_len)  # query head of the row
    m_pos = q_offset + i
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < head_dim
    q_rows = Q + b * stride_qb + h * stride_qh + i.to(tl.int64) * stride_qm
    q = tl.load(q_rows[:, None] + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + kvh * stride_kh
    v_base = V + b * stride_vb + kvh * stride_vh
    pad_row = PAD + b * stride_padb
    doc_row = DOC + b * stride_docb
    mask_rows = MASK + b * stride_mb + i.to(tl.int64) * stride_mq
    q_doc = m_pos
    if HAS_DOC:
        q_doc = tl.load(doc_row + m_pos, mask=row_ok, other=0)
    slope = tl.zeros((BLOCK_M, 1), dtype=tl.float32)
    if HAS_ALIBI:
        slope = tl.load(SLOPES + h, mask=row_ok, other=0.0)[:, None]  # per row: rows span heads
    sup_sorted = tl.load(SUP_SORTED + tl.arange(0, N_CHUNKS))
    s_max = tl.max(sup_sorted, axis=0)

    k_end = tl.minimum(k_len, q_offset + q_len)
    n_start = split * keys_per_split
    n_stop = tl.minimum(k_end, n_start + keys_per_split)
    offs_n = tl.arange(0, BLOCK_N)
    gather_idx = i[:, None] + (BLOCK_N - 1) - offs_n[None, :]  # (BLOCK_M, BLOCK_N) into the window

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(n_start, n_stop, BLOCK_N):
        n_idx = n0 + offs_n
        kv_off = n_idx[:, None].to(tl.int64)
        kv_mask = (n_idx < n_stop)[:, None] & col_ok[None, :]
        k = tl.load(k_base + kv_off * stride_kn + cols[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + kv_off * stride_vn + cols[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        w0 = q_offset - n0 - (BLOCK_N - 1)  # smallest distance of the window
        if w0 < s_max:
            qp = positional_block(
                q_rows, row_ok, P, stride_p, n_table_rows, w0, sup_sorted, ORDER, head_dim,
                BLOCK_M, WINDOW, CHUNK, N_CHUNKS, DOT_PRECISION,
            )
            s = s + tl.gather(qp, gather_idx, axis=1)
        s = mask_logits(s * qk_scale, m_pos, n_idx, n_stop, row_ok, pad_row, doc_row, q_doc, mask_rows,
                        stride_mk, slope, True, HAS_PAD, HAS_DOC, HAS_MASK, HAS_ALIBI)
        m_i, l_i, acc = online_softmax_step(s, m_i, l_i, acc, v, DOT_PRECISION)

    part = (split.to(tl.int64) * n_bkv + pid_bkv) * BLOCK_M + r
    tl.store(OPART + part[:, None] * BLOCK_D + cols[None, :], acc)
    tl.store(MPART + part, m_i)
    tl.store(LPART + part, l_i)


@triton.jit(do_not_specialize=["n_splits", "q_len"])
def _decode_combine_kernel(
    OPART, MPART, LPART, OUT, stride_ob, stride_oh, stride_om,
    n_splits, n_bkv, Hkv, G, q_len, head_dim,
    BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_bkv = tl.program_id(0)
    r = tl.program_id(1)
    b = (pid_bkv // Hkv).to(tl.int64)
    h = ((pid_bkv % Hkv) * G + r // q_len).to(tl.int64)
    i = (r % q_len).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    m_run = float("-inf")
    l_run = 0.0
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for s0 in range(0, n_splits, BLOCK_S):  # BLOCK_S slices at a time, merged online
        s = s0 + tl.arange(0, BLOCK_S)
        s_ok = s < n_splits
        part = (s.to(tl.int64) * n_bkv + pid_bkv) * BLOCK_M + r
        m = tl.load(MPART + part, mask=s_ok, other=float("-inf"))
        l = tl.load(LPART + part, mask=s_ok, other=0.0)
        m_new = tl.maximum(m_run, tl.max(m, axis=0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        w = tl.exp2(m - m_safe)  # 0 for empty slices
        alpha = tl.exp2(m_run - m_safe)
        o = tl.load(OPART + part[:, None] * BLOCK_D + cols[None, :], mask=s_ok[:, None], other=0.0)
        acc = acc * alpha + tl.sum(w[:, None] * o, axis=0)
        l_run = l_run * alpha + tl.sum(w * l, axis=0)
        m_run = m_new
    out = acc / tl.where(l_run == 0.0, 1.0, l_run)
    out_ptrs = OUT + b * stride_ob + h * stride_oh + i * stride_om + cols
    tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=cols < head_dim)


COMBINE_SPLITS = 16  # slices merged per step of the combine kernel


@functools.lru_cache(maxsize=8)
def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_splits(device: torch.device, n_bkv: int) -> int:
    """Cache slices for two programs per multiprocessor (at least one per (batch, kv head))."""
    return min(MAX_SPLITS, triton.cdiv(2 * _multiprocessors(device), n_bkv))


def decode_launches(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
    sup_sorted: torch.Tensor, order: torch.Tensor, extras: Extras,
    scaling: float, q_offset: int, tile: TileConfig, chunk: int, n_splits: int,
) -> tuple[list[Launch], torch.Tensor]:
    """Split-K decoding launches (split, combine) and their output, for few queries
    (Lq <= 16, (H / Hkv) x Lq <= 64).

    Args as in `forward.forward_launches`; ``tile.block`` is the key tile BLOCK_N and n_splits
    the number of cache slices asked for (reduced to the number of key tiles).

    Returns:
        (launches, out): out (B, H, Lq, D) dense in q's dtype.
    """
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = H // Hkv
    block_n = tile.block
    block_d = sup_sorted.numel() * chunk
    block_m = max(16, next_power_of_2(G * Lq))
    window = next_power_of_2(block_n + Lq - 1)
    k_end = min(Lk, q_offset + Lq)
    n_blocks = triton.cdiv(k_end, block_n)
    n_splits = max(1, min(n_splits, n_blocks))
    keys_per_split = triton.cdiv(n_blocks, n_splits) * block_n
    n_splits = triton.cdiv(k_end, keys_per_split)
    n_bkv = B * Hkv
    opart = dense((n_splits, n_bkv, block_m, block_d), torch.float32, q.device)
    mpart = dense((n_splits, n_bkv, block_m), torch.float32, q.device)
    lpart = dense((n_splits, n_bkv, block_m), torch.float32, q.device)
    out = dense(q.shape, q.dtype, q.device)
    split = Launch(_decode_split_kernel, (n_bkv, n_splits), (
        q, k, v, table, sup_sorted, order, extras.pad, extras.doc, extras.mask, extras.slopes,
        opart, mpart, lpart, *row_strides(q), *row_strides(k), *row_strides(v), table.stride(0), *extras.strides,
        Hkv, G, Lq, Lk, table.shape[0], D, q_offset, scaling * LOG2E, keys_per_split, n_bkv,
    ), dict(
        **extras.flags, BLOCK_M=block_m, BLOCK_N=block_n, WINDOW=window, BLOCK_D=block_d, CHUNK=chunk,
        N_CHUNKS=sup_sorted.numel(), DOT_PRECISION=dot_precision(q.dtype),
        num_warps=tile.num_warps, num_stages=tile.num_stages,
    ))
    combine = Launch(_decode_combine_kernel, (n_bkv, G * Lq), (
        opart, mpart, lpart, out, *row_strides(out), n_splits, n_bkv, Hkv, G, Lq, D,
    ), dict(BLOCK_M=block_m, BLOCK_S=COMBINE_SPLITS, BLOCK_D=block_d, num_warps=4))
    return [split, combine], out
