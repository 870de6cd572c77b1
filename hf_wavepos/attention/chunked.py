"""Query-chunked wavelet attention with a recomputing backward: the CPU default.

Algorithm, for one chunk of c queries at positions m0 .. m1 = m0 + c - 1 (keys 0 .. m1):

1. Content logits: one batched GEMM per key/value head, the G query heads of a group folded into
   the rows: (B * Hkv, G * c, D) x (B * Hkv, D, K). The keys are read in place (no copy, no
   broadcast over the group).
2. Positional logits: one GEMM for all heads, (B * H * c, D) x (D, W), against the W table rows
   of the chunk's band (the 1e-6 rule of docs/METHOD.md skips the distances past it), added to
   the content logits of the band through a strided skew view whose extra columns hold -inf, so
   the same add applies the causal mask (`hf_wavepos.attention.chunks`).
3. Softmax, and the output P @ V as one batched GEMM per key/value head.
4. Backward recomputes the logits chunk by chunk (as FlashAttention does), forms
   dS = P * (dP - rowsum(dO * O)), gets dq from dS @ K plus the skewed dS times the table (one
   GEMM), and accumulates dk, dv (transposed: q^T dS is the faster GEMM shape). The table is
   fixed: no gradient.

The chunks of a call run on torch's threads as independent pieces, each thread with one
intra-op thread (`hf_wavepos.attention.workers`): a call is ~20 operations per chunk, and as
OpenMP regions each of them would end in a barrier that other processes on the CPU stall.
Queries are stored chunk-major, so every operand is contiguous. Peak memory is O(chunk x Lk)
per thread for the forward and the backward (nothing L x L is saved for autograd). Few queries
over a long KV cache (decoding) take `hf_wavepos.attention.decode`; what ``torch.compile`` traces
for decoding takes `static_shape_attention` (shapes only: no band, no threads, no host reads).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from hf_wavepos.attention.contract import AttentionCall, alibi_bias, attention_call, visible_keys
from hf_wavepos.attention.decode import DECODE_MAX_QUERIES, decode_attention_call
from hf_wavepos.attention.chunks import BandWorkspace, ChunkGeometry, QueryChunks, ScratchBuffers, reversed_table
from hf_wavepos.attention.workers import one_intra_op_thread, run_pieces
from hf_wavepos.basis import skip_cutoff, table_support

DEFAULT_CHUNK_SIZE = None  # adaptive: see `auto_chunk_size`
CHUNK_ELEMENTS = 1 << 20  # logits per chunk (all heads) the adaptive size aims for: 4 MiB in float32
MIN_CHUNK, MAX_CHUNK = 64, 1024
PIECES = 8  # at least this many chunks where MIN_CHUNK allows, so that threads share the work evenly


def auto_chunk_size(batch: int, heads: int, q_len: int, k_len: int) -> int:
    """Queries per chunk: a multiple of 64 in [`MIN_CHUNK`, `MAX_CHUNK`] that keeps one chunk's
    logits (all heads) near `CHUNK_ELEMENTS` and makes at least `PIECES` chunks, never more
    than the queries.

    Measured on CPU (AMD EPYC, 2 threads, B=1, H=8, L=2048, D=64, float32, forward + backward,
    quiet machine, ratio to SDPA): 32 -> 1.85x, 64 -> 1.54x, 96 -> 1.55x, 128 -> 1.61x,
    192 -> 1.73x (`oka2025`; `long` alike): the diagonal block computes c^2 / 2 masked logits and
    larger chunks leave the caches, smaller ones make GEMMs inefficient. Peak memory is
    O(chunk x Lk) per thread, independent of Lq.
    """
    per_query = max(1, batch * heads * k_len)
    size = min(CHUNK_ELEMENTS // per_query, -(-q_len // PIECES))
    size = max(MIN_CHUNK, min(MAX_CHUNK, size))
    return min(q_len, size - size % 64)


def _chunk_probabilities(q_c, keys, table_rev, geo: ChunkGeometry, space: BandWorkspace, call: AttentionCall):
    """Attention probabilities (B * H, c, K) of one chunk; q_c (B, H, c, D) is already scaled."""
    B, H, c, D = q_c.shape
    Hkv, G, K, kb, W = call.kv_heads, call.groups, geo.keys, geo.band_start, geo.width
    logits = space.scratch.get("logits", (B * Hkv, G * c, K))
    torch.bmm(q_c.view(B * Hkv, G * c, D), keys[:, :K].transpose(1, 2), out=logits)
    logits = logits.view(B * H, c, K)
    if W:
        qp = space.logits()
        torch.mm(q_c.view(B * H * c, D), table_rev[-W:].T, out=space.band_columns(qp, geo))
        logits[:, :, kb:] += space.skew_view(qp, geo)  # + q_i . p[m_i - n] on the band, -inf for future keys
    if call.alibi_slopes is not None:
        bias = alibi_bias(geo.positions(q_c.device), K, call.alibi_slopes.to(q_c.dtype))  # (H, c, K)
        logits.view(B, H, c, K).add_(bias)
    if call.rows_may_be_empty:
        rows = None if call.attn_mask is None else call.attn_mask[:, :, geo.start : geo.stop]
        visible = visible_keys(geo.positions(q_c.device), K, call.key_padding_mask, call.document_ids, rows)
        logits.view(B, H, c, K).masked_fill_(~visible, float("-inf"))  # (B|1, 1, c, K)
        return _softmax(logits, space).nan_to_num_(0.0)  # rows that see no key: zeros
    if not W:  # no band to carry the causal mask: mask the future keys (among the last c) here
        future = torch.ones(c, c, dtype=torch.bool, device=q_c.device).triu_(1)
        logits[:, :, K - c :].masked_fill_(future, float("-inf"))
    return _softmax(logits, space)


def _softmax(logits: torch.Tensor, space: BandWorkspace) -> torch.Tensor:
    """softmax over the keys of ``logits`` (N, c, K), into the thread's ``probs`` buffer."""
    return torch.ops.aten._softmax.out(logits, -1, False, out=space.scratch.get("probs", logits.shape))


class _Plan:
    """What every chunk of one call shares: the chunks, scaled queries per chunk, keys and values
    as (B * Hkv, Lk, D), the reversed table of the widest band, one workspace per thread."""

    def __init__(self, q, k, v, call: AttentionCall, chunk_size: int):
        self.support = table_support(call.table[: call.rows], skip_cutoff(q.dtype))
        self.chunks = QueryChunks(call.q_len, chunk_size)
        self.max_width = min(call.rows, self.support + chunk_size - 1) if self.support else 0
        self.table_rev = reversed_table(call.table, self.max_width, q.dtype)
        self.q_parts = self.chunks.split(q, call.scaling)
        B, Hkv, Lk, D = k.shape
        self.keys, self.values = k.view(B * Hkv, Lk, D), v.view(B * Hkv, Lk, D)
        self.call, self.heads = call, call.batch * call.heads
        self._spaces: dict[tuple[int, int], BandWorkspace] = {}
        self._scratch: dict[int, ScratchBuffers] = {}

    def chunk(self, index: int, worker: int) -> tuple[ChunkGeometry, BandWorkspace]:
        """The geometry of chunk ``index`` and the workspace of thread ``worker`` for its size."""
        geo = ChunkGeometry(*self.chunks.bounds[index], self.call, self.support)
        key = (worker, geo.size)
        if key not in self._spaces:
            q = self.q_parts[0]
            scratch = self._scratch.setdefault(worker, ScratchBuffers(q.dtype, q.device))
            self._spaces[key] = BandWorkspace(self.heads, geo.size, self.max_width, scratch)
        return geo, self._spaces[key]

    def run(self, piece: Callable[[int, int], None], threads: int) -> None:
        """``piece(index, worker)`` for every chunk, largest first, on ``threads`` threads (`run_pieces`)."""
        order = reversed(range(len(self.q_parts)))
        run_pieces([lambda worker, i=i: piece(i, worker) for i in order], threads)


class _ChunkedWavePosAttention(torch.autograd.Function):
    """Autograd of one call: q, k, v are the call's float32 or float64 tensors (k and v contiguous)."""

    @staticmethod
    def forward(ctx, q, k, v, call: AttentionCall, chunk_size: int):
        with one_intra_op_thread() as threads:
            out = _forward(q, k, v, call, chunk_size, threads)
        ctx.save_for_backward(q, k, v, out)
        ctx.call, ctx.chunk_size = call, chunk_size
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out = ctx.saved_tensors
        with one_intra_op_thread() as threads:
            dq, dk, dv = _backward(q, k, v, out, grad_out, ctx.call, ctx.chunk_size, threads)
        return dq, dk, dv, None, None


def _forward(q, k, v, call: AttentionCall, chunk_size: int, threads: int) -> torch.Tensor:
    """(B, H, Lq, D): the chunks on ``threads`` threads."""
    plan = _Plan(q, k, v, call, chunk_size)
    B, H, _, D = q.shape
    rows = (B * call.kv_heads, call.groups)
    outs: list[torch.Tensor | None] = [None] * len(plan.q_parts)

    def piece(index: int, worker: int) -> None:
        geo, space = plan.chunk(index, worker)
        probs = _chunk_probabilities(plan.q_parts[index], plan.keys, plan.table_rev, geo, space, call)
        out_c = torch.bmm(probs.view(rows[0], rows[1] * geo.size, geo.keys), plan.values[:, : geo.keys])
        outs[index] = out_c.view(B, H, geo.size, D)

    plan.run(piece, threads)
    return torch.cat(outs, dim=2)


def _backward(q, k, v, out, grad_out, call: AttentionCall, chunk_size: int, threads: int):
    """(dq, dk, dv): the chunks recomputed on ``threads`` threads."""
    plan = _Plan(q, k, v, call, chunk_size)
    delta = (grad_out * out).sum(-1, keepdim=True)  # (B, H, Lq, 1): rowsum(dO * O)
    do_parts, delta_parts = plan.chunks.split(grad_out), plan.chunks.split(delta)
    dqs: list[torch.Tensor | None] = [None] * len(plan.q_parts)
    # dk, dv accumulate transposed, (B * Hkv, D, Lk), one pair per thread: the GEMM
    # q_c^T @ dS (D x K) runs faster on CPU than dS^T @ q_c (K x D).
    sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def piece(index: int, worker: int) -> None:
        if worker not in sums:
            dk_t = plan.keys.new_zeros(plan.keys.shape[0], plan.keys.shape[2], plan.keys.shape[1])
            sums[worker] = (dk_t, torch.zeros_like(dk_t))
        geo, space = plan.chunk(index, worker)
        dqs[index] = _chunk_backward(plan, index, geo, space, do_parts[index], delta_parts[index], *sums[worker])

    plan.run(piece, threads)
    dq = torch.cat(dqs, dim=2).mul_(call.scaling)
    dk_t, dv_t = (torch.stack(parts).sum(0) if len(parts) > 1 else parts[0] for parts in zip(*sums.values()))
    return dq, dk_t.transpose(1, 2).view(k.shape), dv_t.transpose(1, 2).view(v.shape)


def _chunk_backward(plan: _Plan, index: int, geo: ChunkGeometry, space: BandWorkspace, do_c, delta_c, dk_t, dv_t):
    """dq (B, H, c, D) of one chunk (before the scaling); accumulates dk_t, dv_t (B * Hkv, D, Lk)."""
    call, q_c, keys, values = plan.call, plan.q_parts[index], plan.keys, plan.values
    B, H, c, D = q_c.shape
    K, kb, W = geo.keys, geo.band_start, geo.width
    probs = _chunk_probabilities(q_c, keys, plan.table_rev, geo, space, call)  # recomputed, (B * H, c, K)
    rows = (B * call.kv_heads, call.groups * c)
    dp = torch.bmm(do_c.view(*rows, D), values[:, :K].transpose(1, 2), out=space.scratch.get("dp", (*rows, K)))
    dp = dp.view(B * H, c, K)
    ds = dp.sub_(delta_c.view(B * H, c, 1)).mul_(probs)  # dS = P * (dP - delta), in place
    dq = torch.bmm(ds.view(*rows, K), keys[:, :K])  # content term
    if W:
        grad_qp = space.gradient(geo)
        space.skew_view(grad_qp, geo).copy_(ds[:, :, kb:])  # dS of the band, in the layout of QP
        dq.view(B * H * c, D).addmm_(space.band_columns(grad_qp, geo), plan.table_rev[-W:])
    # A batched GEMM wants a contiguous result, and dk_t[..., :K] is not one (K < Lk): add.
    part = space.scratch.get("dkv", (rows[0], D, K))
    dk_t[:, :, :K] += torch.bmm(q_c.view(*rows, D).transpose(1, 2), ds.view(*rows, K), out=part)
    dv_t[:, :, :K] += torch.bmm(do_c.view(*rows, D).transpose(1, 2), probs.view(*rows, K), out=part)
    return dq.view(B, H, c, D)


def chunked_backend(call: AttentionCall, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Memory-bounded wavelet attention (Eq. 10) of one validated call, with autograd.

    Calls with a tensor ``q_offset`` (a traced static-cache step) and calls traced by
    ``torch.compile`` without gradients take `static_shape_attention` (shapes only, one graph).
    Other calls with at most `DECODE_MAX_QUERIES` queries (decoding, short continuations) and no
    ``chunk_size`` given take `hf_wavepos.attention.decode.decode_attention_call`.

    Args:
        call: the validated call; (B, H, Lq, D) in q's dtype comes back, rows that see no key zero.
        chunk_size: queries per chunk (None: `auto_chunk_size`); peak memory is O(chunk_size x Lk)
            per head.

    Raises:
        ValueError: if chunk_size is not a positive integer or None.
    """
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    if call.q_len == 0:
        return call.q.new_zeros(call.q.shape)
    if call.has_tensor_offset or (torch.compiler.is_compiling() and not _needs_grad(call)):
        size = chunk_size or auto_chunk_size(call.batch, call.heads, call.q_len, call.k_len)
        return static_shape_attention(call, size)
    if chunk_size is None and call.q_len <= DECODE_MAX_QUERIES:
        return decode_attention_call(call)
    if chunk_size is None:
        chunk_size = auto_chunk_size(call.batch, call.heads, call.q_len, call.k_len)
    # Half precisions are computed in float32 and rounded once at the end: on CPU that is no
    # slower, and every intermediate (logits, dS, dq) keeps float32 accuracy.
    half = call.q.dtype in (torch.float16, torch.bfloat16)
    q, k, v = (t.float() if half else t for t in (call.q, call.k, call.v))
    slopes = None if call.alibi_slopes is None else call.alibi_slopes.detach()
    work = dataclasses.replace(
        call, q=q, k=k.contiguous(), v=v.contiguous(), table=call.table.detach(), alibi_slopes=slopes
    )
    out = _ChunkedWavePosAttention.apply(work.q, work.k, work.v, work, chunk_size)
    return out.to(call.q.dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _needs_grad(call: AttentionCall) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in (call.q, call.k, call.v))


def static_shape_attention(call: AttentionCall, chunk_size: int) -> torch.Tensor:
    """The call computed with shapes only: (B, H, Lq, D) in q's dtype, rows that see no key zero.

    What ``torch.compile`` traces: the query offset may be a tensor (a static cache's length,
    kept on the device) and is never read on the host, so one graph serves every decoding step;
    no ``nonzero`` / ``.item()`` / storage offsets. Each chunk of ``chunk_size`` queries scores
    all Lk keys: the positional term is gathered from q . p[r] (r < Lk) at the distances m - n.
    Causal skipping and the 1e-6 band need the offset and the table's values on the host, so
    they are not applied (the exact formula). Memory O(chunk_size x Lk) per head; plain torch
    ops, differentiated by autograd (used without gradients unless the offset is a tensor).
    """
    B, H, Lq, D = call.q.shape
    Hkv, G, Lk, cdt = call.kv_heads, call.groups, call.k_len, _compute_dtype(call.q.dtype)
    q, k, v = (t.to(cdt) for t in (call.q, call.k, call.v))
    table = call.table[:Lk].detach().to(cdt)  # rows for distances 0 .. Lk - 1
    keys = torch.arange(Lk, device=q.device)
    q5 = (q * call.scaling).view(B, Hkv, G, Lq, D)
    outs = []
    for start in range(0, Lq, chunk_size):
        stop = min(start + chunk_size, Lq)
        q_c = q5[:, :, :, start:stop]  # (B, Hkv, G, c, D)
        positions = torch.arange(start, stop, device=q.device) + call.q_offset  # (c,) on the device
        distance = (positions[:, None] - keys[None, :]).clamp(min=0)  # (c, Lk); future keys masked below
        logits = q_c @ k[:, :, None].transpose(-1, -2)  # (B, Hkv, G, c, Lk): q_i . k_n
        logits = logits + (q_c @ table.T).gather(-1, distance.expand(*logits.shape))  # + q_i . p[m_i - n]
        if call.alibi_slopes is not None:
            bias = alibi_bias(positions, Lk, call.alibi_slopes.detach().to(cdt))  # (H, c, Lk)
            logits = logits + bias.view(Hkv, G, stop - start, Lk)
        rows = None if call.attn_mask is None else call.attn_mask[:, :, start:stop]
        visible = visible_keys(positions, Lk, call.key_padding_mask, call.document_ids, rows)
        logits = logits.masked_fill(~visible[:, :, None], float("-inf"))  # (B|1, 1, 1, c, Lk)
        probs = torch.softmax(logits, dim=-1)  # out of place: autograd keeps softmax's output
        probs = probs.nan_to_num(0.0) if call.rows_may_be_empty else probs
        outs.append(probs @ v[:, :, None])  # (B, Hkv, G, c, D)
    return torch.cat(outs, dim=3).reshape(B, H, Lq, D).to(call.q.dtype)


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    table: torch.Tensor,
    *,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    **contract: Any,
) -> torch.Tensor:
    """The ``chunked`` backend called directly: arguments, result and errors as
    `hf_wavepos.wavepos_attention` (the contract: `hf_wavepos.attention.contract.AttentionCall`),
    plus ``chunk_size`` of `chunked_backend`."""
    return chunked_backend(attention_call(q, k, v, table, **contract), chunk_size)
