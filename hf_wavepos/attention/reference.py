"""Reference wavelet attention: the formula of Eq. 10, materialised, exact in float64.

This is the numeric truth every other backend is tested against. It builds the full
(B, H, Lq, Lk) logits, so it is for tests, debugging and ``attn_implementation="eager"``,
not for long sequences.
"""

from __future__ import annotations

from typing import Any

import torch

from hf_wavepos.attention.contract import AttentionCall, alibi_bias, attention_call, visible_keys


def reference_backend(call: AttentionCall) -> torch.Tensor:
    """Materialised wavelet attention (Eq. 10) of one validated call; (B, H, Lq, D) in q's dtype.

    Softmax runs in float32 for lower precisions (as transformers' eager attention does) and in
    float64 for float64.
    """
    return reference_with_probabilities(call)[0]


def reference_with_probabilities(call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
    """`reference_backend`'s output and the attention probabilities it used.

    Returns:
        out (B, H, Lq, D) and probs (B, H, Lq, Lk), both in q's dtype: probs[b, h, i, n] is
        softmax_n(e[m, n]) over the visible keys (0 elsewhere; a row that sees no key is all 0),
        what transformers' eager attention returns as ``attentions``.
    """
    q, Lq, Lk, G, off = call.q, call.q_len, call.k_len, call.groups, call.q_offset
    k = call.k.repeat_interleave(G, dim=1)  # (B, H, Lk, D)
    v = call.v.repeat_interleave(G, dim=1)

    m = torch.arange(Lq, device=q.device) + off  # (Lq,) query positions (off: int, or traced 0-d tensor)
    n = torch.arange(Lk, device=q.device)  # (Lk,) key positions
    distance = (m[:, None] - n[None, :]).clamp(min=0)  # (Lq, Lk); future keys are masked below

    content = q @ k.transpose(-1, -2)  # (B, H, Lq, Lk): q_m . k_n
    q_dot_p = q @ call.table[: call.rows].to(q.dtype).T  # (B, H, Lq, R): q_m . p[r]
    position = q_dot_p.gather(-1, distance.expand(call.batch, call.heads, Lq, Lk))  # q_m . p[m - n]

    softmax_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    logits = (content.to(softmax_dtype) + position.to(softmax_dtype)) * call.scaling
    if call.alibi_slopes is not None:
        logits = logits + alibi_bias(m, Lk, call.alibi_slopes.to(softmax_dtype))  # -slope_h (m - n)
    visible = visible_keys(m, Lk, call.key_padding_mask, call.document_ids, call.attn_mask)  # (B|1, 1, Lq, Lk)
    # A finite fill keeps fully masked rows finite (uniform), so their gradient stays finite.
    logits = logits.masked_fill(~visible, torch.finfo(softmax_dtype).min)
    probs = torch.softmax(logits, dim=-1)
    probs = torch.where(visible.any(-1, keepdim=True), probs, torch.zeros_like(probs)).to(v.dtype)
    return probs @ v, probs


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, **contract: Any
) -> torch.Tensor:
    """The ``reference`` backend called directly: arguments, result and errors as
    `hf_wavepos.wavepos_attention` (the contract: `hf_wavepos.attention.contract.AttentionCall`)."""
    return reference_backend(attention_call(q, k, v, table, **contract))
