"""The float64 reference against Eq. 10 computed one logit at a time: the truth of every other test."""

import math

import pytest
import torch

from attention_cases import make_inputs
from hf_wavepos import WavePosConfig, wavelet_table
from hf_wavepos.attention import reference_attention


def double_loop(q, k, v, table, q_offset, key_padding_mask=None, document_ids=None, attn_mask=None, alibi_slopes=None):
    """Eq. 10 one logit at a time."""
    B, H, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            hk = h // (H // Hkv)
            for i in range(Lq):
                m = q_offset + i
                logits, values = [], []
                for n in range(Lk):
                    if n > m:
                        continue
                    if key_padding_mask is not None and not key_padding_mask[b, n]:
                        continue
                    if document_ids is not None and document_ids[b, n] != document_ids[b, m]:
                        continue
                    if attn_mask is not None and not attn_mask[b, 0, i, n]:
                        continue
                    e = (q[b, h, i] @ k[b, hk, n] + q[b, h, i] @ table[m - n]) / math.sqrt(D)
                    if alibi_slopes is not None:
                        e = e - alibi_slopes[h] * (m - n)
                    logits.append(e)
                    values.append(v[b, hk, n])
                if logits:
                    w = torch.softmax(torch.stack(logits), 0)
                    out[b, h, i] = (w[:, None] * torch.stack(values)).sum(0)
    return out


@pytest.mark.parametrize("case", ["plain", "gqa_offset", "padding", "documents", "dense_mask", "alibi"])
def test_reference_equals_double_loop(case):
    B, H, Hkv, Lq, Lk, D = 2, 4, 2, 7, 7, 8
    kwargs = {}
    q_offset = 0
    if case == "gqa_offset":
        Lq, q_offset = 3, 4
    if case == "padding":
        kwargs["key_padding_mask"] = torch.tensor([[False, False, True, True, True, True, True], [True] * 7])
    if case == "documents":
        kwargs["document_ids"] = torch.tensor([[0, 0, 0, 1, 1, 2, 2], [5, 5, 5, 5, 6, 6, 6]])
    if case == "dense_mask":
        kwargs["attn_mask"] = torch.rand(B, 1, Lq, Lk, generator=torch.Generator().manual_seed(5)) > 0.3
    if case == "alibi":
        kwargs["alibi_slopes"] = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)
    q, k, v = make_inputs(B, H, Hkv, Lq, Lk, D)
    table = wavelet_table(WavePosConfig(num_scales=4), D, Lk, dtype=torch.float64)
    got = reference_attention(q, k, v, table, q_offset=q_offset, **kwargs)
    want = double_loop(q, k, v, table, q_offset, **kwargs)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_reference_gradcheck_tiny():
    q, k, v = make_inputs(1, 2, 1, 5, 6, 4)
    table = wavelet_table(WavePosConfig(num_scales=2), 4, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q, k, v: reference_attention(q, k, v, table, q_offset=1), (q, k, v))
