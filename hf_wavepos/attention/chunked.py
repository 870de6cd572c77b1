"""Query-chunked wavelet attention with a recomputing backward: the CPU default.

Algorithm (one chunk of c queries at positions m0 .. m1 = m0 + c - 1):

1. Causal skipping: only keys n < K = min(Lk, m1 + 1) can be visible.
2. Band skipping (the 1e-6 rule of METHOD.md): let R be one more than the largest distance whose
   table row has an entry >= 1e-6 (`hf_wavepos.basis.table_support`; in float64: any non-zero
   entry, so float64 stays exact). Keys n < kb = max(0, m0 - R + 1) are at distance >= R from
   every query of the chunk, so their positional term is skipped; distances 0 .. m1 - kb remain.
   For the paper's small scales R is ~ 6 x the largest scale, for large scales kb is 0.
3. One matmul gives both terms. With P_rev[u] = p[m1 - kb - u] (u = 0 .. m1 - kb), a zero row,
   then the keys, the chunk computes

       S = (scaling * q_chunk) @ [P_rev ; 0 ; K[:K]]^T           (c, W + K),  W = m1 - kb + 2

   so S[i, u] = q_i . p[m1 - kb - u] for u < W and S[i, W + n] = q_i . k_n.
4. Skew without a gather: q_i . p[m_i - n] for key n = kb + j sits at S[i, (c - 1 - i) + j], at
   flat offset (c - 1) + i * (W + K - 1) + j of the row-major chunk. That is a strided *view*
   (row stride W + K - 1, one element per (i, j), no two sharing memory) whose entries for
   visible keys all fall inside the positional block; future keys read other values, which the
   causal mask discards. It is added to the content logits of keys kb .. K - 1.
5. Softmax (recomputed in the backward: cheaper here than storing a log-sum-exp and
   re-exponentiating); the output is P @ V. Only O(c x (W + K)) is live.
6. Backward recomputes S and P chunk by chunk (as FlashAttention does), forms
   dS = P * (dP - rowsum(dO * O)), writes dS into a zero buffer through the same strided view
   (positional block) and as a plain block (content block), and gets dq for both terms with one
   matmul against [P_rev ; 0 ; K]. dk and dv accumulate over chunks. p is fixed: no gradient.

Peak memory is O(chunk x Lk) for the forward *and* the backward (nothing L x L is saved for
autograd) and no L x L x D tensor is ever built. Grouped-query attention is handled by viewing
the H query heads as (Hkv, G) and broadcasting keys across G.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from hf_wavepos.attention.contract import AttentionCall, alibi_bias, attention_call, visible_keys
from hf_wavepos.basis import skip_cutoff, table_support

DEFAULT_CHUNK_SIZE = None  # adaptive: see `auto_chunk_size`
CHUNK_ELEMENTS = 1 << 19  # logits per chunk (all heads) the adaptive size aims for: 2 MiB in float32


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def auto_chunk_size(batch: int, heads: int, q_len: int, k_len: int) -> int:
    """Queries per chunk: as many as keep one chunk's logits near `CHUNK_ELEMENTS`, in [64, 1024].

    Chunks whose logits stay cache-sized were fastest on CPU (2 threads, fwd only, `long` preset:
    H=4 D=16 L=4096: 64 -> 179 ms vs 256 -> 295 ms; H=4 D=16 L=512: 128 -> 5 ms vs 32 -> 8 ms);
    the bound keeps peak memory O(chunk x Lk), independent of Lq.
    """
    per_query = max(1, batch * heads * 2 * k_len)  # positional block + keys
    size = max(64, min(1024, CHUNK_ELEMENTS // per_query))
    return min(q_len, size - size % 64 if size >= 64 else size)


def _keys_with_table(k: torch.Tensor, table: torch.Tensor, rows: int) -> torch.Tensor:
    """[P_rev ; 0 ; K] of shape (B, Hkv, rows + 1 + Lk, D), P_rev[s] = p[rows - 1 - s]."""
    B, Hkv, _, D = k.shape
    p_rev = table[:rows].flip(0).to(k.dtype)
    zero = k.new_zeros(1, D)
    head = torch.cat([p_rev, zero], dim=0).expand(B, Hkv, rows + 1, D)
    return torch.cat([head, k], dim=2)


class _Chunk:
    """Index bookkeeping of one query chunk (see the module docstring)."""

    def __init__(self, start: int, stop: int, call: AttentionCall, support: int):
        self.start, self.stop = start, stop
        self.size = stop - start
        first, last = call.q_offset + start, call.q_offset + stop - 1  # m0, m1
        self.keys = min(call.k_len, last + 1)  # K
        self.band_start = min(max(0, first - support + 1), self.keys)  # kb
        self.width = last - self.band_start + 2  # W: distances 0..m1-kb plus the zero column
        rows = call.rows
        first_row = rows - (last - self.band_start + 1)  # P_rev row of distance m1 - kb
        self.kp_rows = slice(first_row, rows + 1 + self.keys)
        self.positions = torch.arange(first, last + 1)

    def skew_view(self, s: torch.Tensor) -> torch.Tensor:
        """View of S (..., c, W + K), contiguous, with [..., i, j] = S[..., i, c - 1 - i + j].

        j runs over the keys kb .. K - 1 of the band.
        """
        n_cols = self.width + self.keys
        size = (*s.shape[:-1], self.keys - self.band_start)
        stride = (*s.stride()[:-2], n_cols - 1, 1)
        return s.as_strided(size, stride, s.storage_offset() + self.size - 1)


def _chunk_logits(qs5, kp, chunk: _Chunk, call: AttentionCall, cdt):
    """Masked logits (B, Hkv, G, c, K) in the compute dtype, the scaled queries and keys used."""
    q_c = qs5[:, :, :, chunk.start : chunk.stop]  # (B, Hkv, G, c, D), already scaled
    kp_c = kp[:, :, None, chunk.kp_rows]  # (B, Hkv, 1, W + K, D)
    s = torch.matmul(q_c, kp_c.transpose(-1, -2)).contiguous()  # (B, Hkv, G, c, W + K)
    logits = s[..., chunk.width :].to(cdt, copy=True)  # content: q_i . k_n
    logits[..., chunk.band_start :] += chunk.skew_view(s)  # + q_i . p[m_i - n]
    positions = chunk.positions.to(qs5.device)
    if call.alibi_slopes is not None:
        bias = alibi_bias(positions, chunk.keys, call.alibi_slopes.to(cdt))  # (H, c, K)
        logits += bias.view(call.kv_heads, call.groups, chunk.size, chunk.keys)
    if not call.rows_may_be_empty:
        # Only the diagonal block has future keys.
        first = call.q_offset + chunk.start
        if first < chunk.keys:
            n = torch.arange(first, chunk.keys, device=qs5.device)
            future = n[None, :] > positions[:, None]  # (c, K - m0)
            logits[..., first:].masked_fill_(future, float("-inf"))
    else:
        rows = None if call.attn_mask is None else call.attn_mask[:, :, chunk.start : chunk.stop]
        visible = visible_keys(positions, chunk.keys, call.key_padding_mask, call.document_ids, rows)
        logits.masked_fill_(~visible[:, :, None], float("-inf"))  # (B|1, 1, 1, c, K)
    return logits, q_c, kp_c


def _probabilities(logits: torch.Tensor, masked_rows_possible: bool) -> torch.Tensor:
    """Row softmax; rows with no visible key (only possible with masks) become zeros."""
    probs = torch.softmax(logits, dim=-1)
    return probs.nan_to_num_(0.0) if masked_rows_possible else probs


class _ChunkedWavePosAttention(torch.autograd.Function):
    """Autograd of one call: q, k, v are the call's (contiguous, float32 or float64) tensors."""

    @staticmethod
    def forward(ctx, q, k, v, call: AttentionCall, chunk_size: int):
        B, H, Lq, D = q.shape
        G, cdt = call.groups, _compute_dtype(q.dtype)
        support = table_support(call.table[: call.rows], skip_cutoff(cdt))
        qs5 = (q * call.scaling).view(B, call.kv_heads, G, Lq, D)
        kp = _keys_with_table(k, call.table, call.rows)
        out = q.new_empty(B, call.kv_heads, G, Lq, D)
        for start in range(0, Lq, chunk_size):
            chunk = _Chunk(start, min(start + chunk_size, Lq), call, support)
            logits, _, _ = _chunk_logits(qs5, kp, chunk, call, cdt)
            probs = _probabilities(logits, call.rows_may_be_empty)  # (B, Hkv, G, c, K)
            v_c = v[:, :, None, : chunk.keys]  # (B, Hkv, 1, K, D)
            out[:, :, :, chunk.start : chunk.stop] = torch.matmul(probs.to(v.dtype), v_c)
        ctx.save_for_backward(q, k, v, call.table, out)
        ctx.call, ctx.chunk_size, ctx.support = call, chunk_size, support
        return out.view(B, H, Lq, D)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, table, out = ctx.saved_tensors
        call, chunk_size = ctx.call, ctx.chunk_size
        B, H, Lq, D = q.shape
        Hkv, G, cdt = call.kv_heads, call.groups, _compute_dtype(q.dtype)
        qs5 = (q * call.scaling).view(B, Hkv, G, Lq, D)
        do5 = grad_out.reshape(B, Hkv, G, Lq, D)
        kp = _keys_with_table(k, table, call.rows)
        delta = (do5.to(cdt) * out.to(cdt)).sum(-1)  # (B, Hkv, G, Lq): rowsum(dO * O)
        dq = torch.empty(B, Hkv, G, Lq, D, dtype=q.dtype, device=q.device)
        dk = torch.zeros(B, Hkv, call.k_len, D, dtype=cdt, device=q.device)
        dv = torch.zeros_like(dk)
        for start in range(0, Lq, chunk_size):
            chunk = _Chunk(start, min(start + chunk_size, Lq), call, ctx.support)
            c, K = chunk.size, chunk.keys
            sl = slice(chunk.start, chunk.stop)
            logits, qs_c, kp_c = _chunk_logits(qs5, kp, chunk, call, cdt)
            probs = _probabilities(logits, call.rows_may_be_empty)  # recomputed, (B, Hkv, G, c, K)
            do_c = do5[:, :, :, sl]  # (B, Hkv, G, c, D)
            v_c = v[:, :, None, :K]
            dp = torch.matmul(do_c, v_c.transpose(-1, -2)).to(cdt)  # (B, Hkv, G, c, K)
            ds = probs * (dp - delta[..., sl, None])  # d logits (logits already scaled)
            # dq for both terms in one matmul: scatter dS into the layout of S.
            grad_s = torch.empty(*ds.shape[:-1], chunk.width + K, dtype=q.dtype, device=q.device)
            grad_s[..., : chunk.width].zero_()
            chunk.skew_view(grad_s).copy_(ds[..., chunk.band_start :])  # positional block
            grad_s[..., chunk.width :] = ds  # content block (after: overwrites future-key writes)
            dq[:, :, :, sl] = torch.matmul(grad_s, kp_c)
            # dk, dv: fold the G query heads of a group into the chunk's rows.
            ds_t = ds.to(q.dtype).reshape(B, Hkv, G * c, K).transpose(-1, -2)
            dk[:, :, :K] += torch.matmul(ds_t, qs_c.reshape(B, Hkv, G * c, D)).to(cdt)
            p_t = probs.to(q.dtype).reshape(B, Hkv, G * c, K).transpose(-1, -2)
            dv[:, :, :K] += torch.matmul(p_t, do_c.reshape(B, Hkv, G * c, D)).to(cdt)
        dq = dq.view(B, H, Lq, D) * call.scaling
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None


def chunked_backend(call: AttentionCall, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> torch.Tensor:
    """Memory-bounded wavelet attention (Eq. 10) of one validated call, with autograd.

    Args:
        call: the validated call; (B, H, Lq, D) in q's dtype comes back, rows that see no key zero.
        chunk_size: queries per chunk (None: `auto_chunk_size`); peak memory is O(chunk_size x Lk)
            per head.

    Raises:
        ValueError: if chunk_size is not a positive integer or None.
    """
    if chunk_size is None:
        chunk_size = auto_chunk_size(call.batch, call.heads, call.q_len, call.k_len)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    if call.q_len == 0:
        return call.q.new_zeros(call.q.shape)
    if call.has_tensor_offset or (torch.compiler.is_compiling() and not _needs_grad(call)):
        return static_shape_attention(call, chunk_size)
    # Half precisions are computed in float32 and rounded once at the end: on CPU that is no
    # slower, and every intermediate (logits, dS, dq) keeps float32 accuracy.
    half = call.q.dtype in (torch.float16, torch.bfloat16)
    q, k, v, table = (t.float() if half else t for t in (call.q, call.k, call.v, call.table.detach()))
    slopes = None if call.alibi_slopes is None else call.alibi_slopes.detach()
    work = dataclasses.replace(
        call, q=q.contiguous(), k=k.contiguous(), v=v.contiguous(), table=table, alibi_slopes=slopes
    )
    out = _ChunkedWavePosAttention.apply(work.q, work.k, work.v, work, chunk_size)
    return out.to(call.q.dtype)


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
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, *,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE, **contract: Any,
) -> torch.Tensor:
    """The ``chunked`` backend called directly: arguments, result and errors as
    `hf_wavepos.wavepos_attention` (the contract: `hf_wavepos.attention.contract.AttentionCall`),
    plus ``chunk_size`` of `chunked_backend`."""
    return chunked_backend(attention_call(q, k, v, table, **contract), chunk_size)
