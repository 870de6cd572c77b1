"""Reference wavelet attention: the formula of Eq. 10, materialised, exact in float64.

This is the numeric truth every other backend is tested against. It builds the full
(B, H, Lq, Lk) logits, so it is for tests, debugging and ``attn_implementation="eager"``,
not for long sequences.
"""

from __future__ import annotations

import torch

from hf_wavepos.attention.inputs import alibi_bias, check_attention_inputs, visible_keys


def reference_attention(
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
) -> torch.Tensor:
    """Materialised wavelet attention (Eq. 10); see `hf_wavepos.attention.inputs` for the contract.

    Args:
        q: (B, H, Lq, D) queries, no rotary embedding applied.
        k, v: (B, Hkv, Lk, D), H a multiple of Hkv (grouped-query attention).
        table: (R, D) with R >= q_offset + Lq; row r is p[r] (`hf_wavepos.basis.wavelet_table`).
        scaling: logit scale, default 1/sqrt(D).
        q_offset: absolute position of the first query (cached tokens before it).
        key_padding_mask: (B, Lk) bool, True for real tokens.
        document_ids: (B, Lk) ints; keys of another document are invisible.
        attn_mask: (B|1, 1, Lq, Lk) bool, True where a key may be attended (AND with causal).
        alibi_slopes: (H,) ALiBi slopes: adds -slope_h * (m - n) to the scaled logit.

    Returns:
        (B, H, Lq, D) in q's dtype. Softmax runs in float32 for lower precisions (as
        transformers' eager attention does) and in float64 for float64.
    """
    shape = check_attention_inputs(
        q, k, v, table, scaling=scaling, q_offset=q_offset,
        key_padding_mask=key_padding_mask, document_ids=document_ids,
        attn_mask=attn_mask, alibi_slopes=alibi_slopes,
    )
    B, H, Lq, D = q.shape
    Lk, G, off = shape.k_len, shape.groups, shape.q_offset
    k = k.repeat_interleave(G, dim=1)  # (B, H, Lk, D)
    v = v.repeat_interleave(G, dim=1)

    m = torch.arange(off, off + Lq, device=q.device)  # (Lq,) query positions
    n = torch.arange(Lk, device=q.device)  # (Lk,) key positions
    distance = (m[:, None] - n[None, :]).clamp(min=0)  # (Lq, Lk); future keys are masked below

    content = q @ k.transpose(-1, -2)  # (B, H, Lq, Lk): q_m . k_n
    q_dot_p = q @ table[: off + Lq].to(q.dtype).T  # (B, H, Lq, R): q_m . p[r]
    position = q_dot_p.gather(-1, distance.expand(B, H, Lq, Lk))  # q_m . p[m - n]

    softmax_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    logits = (content.to(softmax_dtype) + position.to(softmax_dtype)) * shape.scaling
    if alibi_slopes is not None:
        logits = logits + alibi_bias(m, Lk, alibi_slopes.to(softmax_dtype))  # -slope_h (m - n)
    visible = visible_keys(m, Lk, key_padding_mask, document_ids, attn_mask)  # (B|1, 1, Lq, Lk)
    # A finite fill keeps fully masked rows finite (uniform), so their gradient stays finite.
    logits = logits.masked_fill(~visible, torch.finfo(softmax_dtype).min)
    probs = torch.softmax(logits, dim=-1)
    probs = torch.where(visible.any(-1, keepdim=True), probs, torch.zeros_like(probs))
    return probs.to(v.dtype) @ v
