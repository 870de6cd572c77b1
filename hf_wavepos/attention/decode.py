"""Few queries over a long KV cache (decoding): the CPU path, close to what SDPA costs.

For Lq <= `DECODE_MAX_QUERIES` queries at positions m_i = q_offset + i over Lk keys, the logits
q_i . k_n + q_i . p[m_i - n] come from two GEMMs that read the cache in place (no copy of the
keys, no broadcast over the G query heads of a group: they are folded into the GEMM rows):

- **One decoding step** (Lq = 1, the query is the last key, float32 / float64): with the table
  rows reversed, T[u] = p[Lk - 1 - u], the positional logits q . p[m - n] = (q T^T)[n] are one
  GEMM in key order, and the content GEMM (B * Hkv, G, D) x (D, Lk) accumulates onto them in
  place (beta = 1). The reversed table is cached per table tensor (tables are cached and
  read-only, `hf_wavepos.positions.positional_inputs`), so a step costs about what SDPA does.
- **Otherwise** (several queries, a static cache, a tensor ``q_offset``, half precisions):
  QP[i, r] = q_i . p[r] for r < W = min(table rows, Lk) by one GEMM, then q_i . p[m_i - n] is a
  gather with index m_i - n (clamped: keys past m_i are masked), added to the content logits in
  float32 as `reference` does.

Then scaling, ALiBi, the visibility rule, softmax (float32; float64 for float64) and P @ V. No
distance is skipped, so float64 is exact and no table value is read to plan the work. Everything
is differentiable PyTorch (autograd; memory O(Lq x Lk) per head). Shapes depend only on input
shapes and no tensor value decides the control flow (no ``.item()``, no ``nonzero``):
``q_offset`` may be an int or a 0-d tensor, so ``torch.compile`` traces a step too; the chunked
backend nevertheless sends traced and tensor-offset calls to
`hf_wavepos.attention.chunked.static_shape_attention`, the one traced path of every backend.
Source: docs/METHOD.md, Sec. 1 (Eq. 10); the contract of `hf_wavepos.attention.contract`.
"""

from __future__ import annotations

import dataclasses
import weakref

import torch

from hf_wavepos.attention.contract import AttentionCall, alibi_bias, visible_keys

DECODE_MAX_QUERIES = 16  # calls with at most this many queries take this path (chunked_backend)
_REVERSED_TABLES: dict[tuple[int, torch.dtype], tuple[weakref.ref, int, torch.Tensor]] = {}


def decode_attention_call(call: AttentionCall) -> torch.Tensor:
    """Wavelet attention (Eq. 10) of one validated call with few queries: (B, H, Lq, D) in q's dtype.

    Args:
        call: the validated call (any Lq works; memory is O(B * H * Lq * Lk)). Rows that see no
            key are zero, with zero gradient.
    """
    # One memory layout for keys and values, whatever their source: a KV cache is contiguous
    # already (no copy), and a model's output then does not depend on whether the keys came
    # from a cache or straight from the projection (a transposed view; matrix products of
    # different layouts round differently).
    call = dataclasses.replace(call, k=call.k.contiguous(), v=call.v.contiguous())
    B, H, Lq, D = call.q.shape
    exact_step = Lq == 1 and isinstance(call.q_offset, int) and call.q_offset + 1 == call.k_len
    if exact_step and call.q.dtype in (torch.float32, torch.float64):
        logits = _step_logits(call)
    else:
        logits = _gathered_logits(call)
    positions = torch.arange(Lq, device=call.q.device) + call.q_offset  # (Lq,) m_i
    if call.alibi_slopes is not None:
        logits.add_(alibi_bias(positions, call.k_len, call.alibi_slopes.to(logits.dtype)))
    visible = None
    if call.rows_may_be_empty or not exact_step:  # a plain step sees every key: nothing to mask
        visible = visible_keys(positions, call.k_len, call.key_padding_mask, call.document_ids, call.attn_mask)
        # A finite fill keeps rows that see nothing finite, so their (zeroed) gradient stays finite.
        logits.masked_fill_(~visible, torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1)
    if call.rows_may_be_empty:
        probs = torch.where(visible.any(-1, keepdim=True), probs, torch.zeros((), dtype=probs.dtype, device=probs.device))
    Hkv, G, Lk = call.kv_heads, call.groups, call.k_len
    out = torch.matmul(probs.to(call.v.dtype).view(B, Hkv, G * Lq, Lk), call.v)  # (B, Hkv, G*Lq, D)
    return out.view(B, H, Lq, D)


def _step_logits(call: AttentionCall) -> torch.Tensor:
    """Scaled logits (B, H, 1, Lk) of one decoding step (Lq = 1, q_offset = Lk - 1), float32/64."""
    B, H, _, D = call.q.shape
    Hkv, G, Lk = call.kv_heads, call.groups, call.k_len
    q = (call.q * call.scaling).reshape(B * Hkv, G, D)
    table = reversed_table_rows(call.table, q.dtype)[-Lk:]  # row u: p[Lk - 1 - u]
    logits = torch.mm(q.view(B * H, D), table.T)  # (B*H, Lk): q . p[m - n] in key order
    logits.view(B * Hkv, G, Lk).baddbmm_(q, call.k.reshape(B * Hkv, Lk, D).transpose(1, 2))  # + q . k_n
    return logits.view(B, H, 1, Lk)


def _gathered_logits(call: AttentionCall) -> torch.Tensor:
    """Scaled logits (B, H, Lq, Lk) in float32 (float64 for float64) for any few-query call."""
    q, k = call.q, call.k
    B, H, Lq, D = q.shape
    Hkv, G, Lk = call.kv_heads, call.groups, call.k_len
    logit_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    prescale = q.dtype == logit_dtype  # half precisions: scale the float32 logits, as `reference`
    if prescale:
        q = q * call.scaling
    logits = torch.matmul(q.reshape(B, Hkv, G * Lq, D), k.transpose(-1, -2)).view(B, H, Lq, Lk).to(logit_dtype)
    width = min(call.table.shape[0], Lk)
    qp = torch.matmul(q.reshape(B * H * Lq, D), call.table[:width].to(q.dtype).T)  # (B*H*Lq, W): q_i . p[r]
    positions = torch.arange(Lq, device=q.device) + call.q_offset
    distance = (positions[:, None] - torch.arange(Lk, device=q.device)[None, :]).clamp(0, width - 1)  # (Lq, Lk)
    logits = logits + qp.view(B, H, Lq, width).gather(-1, distance.expand(B, H, Lq, Lk)).to(logit_dtype)
    return logits if prescale else logits * call.scaling


def reversed_table_rows(table: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(R, D) contiguous in ``dtype``: row u is p[R - 1 - u] of ``table`` (R, D).

    Cached per table tensor while it lives and is unmodified (tables are cached and reused by
    every layer and step); under ``torch.compile`` it is computed in the graph instead.
    """
    if torch.compiler.is_compiling() or table.is_inference():  # inference tensors have no version
        return table.detach().flip(0).to(dtype)
    key = (id(table), dtype)
    hit = _REVERSED_TABLES.get(key)
    if hit is not None and hit[0]() is table and hit[1] == table._version:
        return hit[2]
    with torch.inference_mode(False):  # usable by later calls outside inference mode too
        rows = table.detach().flip(0).to(dtype).contiguous()
    _REVERSED_TABLES[key] = (weakref.ref(table, lambda _, key=key: _REVERSED_TABLES.pop(key, None)), table._version, rows)
    return rows
