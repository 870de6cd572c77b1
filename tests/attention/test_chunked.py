"""Every attention backend against the fp64 reference (and the reference against a double loop)."""

import math

import pytest
import torch

from hf_wavepos import WavePosConfig, use_backend, wavelet_table, wavepos_attention
from hf_wavepos.attention import available_backends, chunked_attention, reference_attention

PAPER = WavePosConfig()
SMALL_SCALES = WavePosConfig(num_scales=2)  # support ~ 24: exercises band skipping at short L


def make_inputs(B, H, Hkv, Lq, Lk, D, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, D, generator=gen, dtype=dtype)
    k = torch.randn(B, Hkv, Lk, D, generator=gen, dtype=dtype)
    v = torch.randn(B, Hkv, Lk, D, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (q, k, v)]


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


def _compare(backend_fn, q, k, v, table, tol, **kwargs):
    ref_out = reference_attention(q, k, v, table, **kwargs)
    out = backend_fn(q, k, v, table, **kwargs)
    grad = torch.randn_like(ref_out)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), grad)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    assert (out - ref_out).abs().max().item() <= tol
    for name, g, rg in zip("qkv", grads, ref_grads):
        assert (g - rg).abs().max().item() <= tol, f"d{name}"


@pytest.mark.parametrize("length", [1, 17, 127, 1000])
@pytest.mark.parametrize("config", [PAPER, SMALL_SCALES], ids=["paper", "small_scales"])
def test_chunked_float64_matches_reference(length, config):
    q, k, v = make_inputs(1, 2, 2, length, length, 16)
    table = wavelet_table(config, 16, length, dtype=torch.float64)
    _compare(lambda *a, **kw: chunked_attention(*a, chunk_size=37, **kw), q, k, v, table, 1e-10)


@pytest.mark.parametrize(
    "Lq, Lk, q_offset", [(1, 1, 0), (1, 300, 299), (5, 300, 295), (40, 300, 100), (64, 200, 0)]
)
def test_chunked_query_offsets_kv_cache(Lq, Lk, q_offset):
    """Lq = 1 decoding, Lq < Lk chunked prefill, and static caches (keys past the queries)."""
    q, k, v = make_inputs(2, 6, 3, Lq, Lk, 16, seed=1)
    table = wavelet_table(SMALL_SCALES, 16, Lk, dtype=torch.float64)
    _compare(lambda *a, **kw: chunked_attention(*a, chunk_size=16, **kw), q, k, v, table, 1e-10, q_offset=q_offset)


def test_chunked_gqa_padding_and_documents():
    B, H, Hkv, L, D = 3, 8, 2, 113, 16
    q, k, v = make_inputs(B, H, Hkv, L, L, D, seed=2)
    table = wavelet_table(SMALL_SCALES, D, L, dtype=torch.float64)
    pad = torch.ones(B, L, dtype=torch.bool)
    pad[0, :20] = False  # left padding
    pad[2, :L - 3] = False  # almost all padding
    docs = torch.zeros(B, L, dtype=torch.long)
    docs[1, 40:] = 1
    docs[1, 90:] = 2
    fn = lambda *a, **kw: chunked_attention(*a, chunk_size=29, **kw)  # noqa: E731
    _compare(fn, q, k, v, table, 1e-10, key_padding_mask=pad)
    _compare(fn, q, k, v, table, 1e-10, document_ids=docs)
    _compare(fn, q, k, v, table, 1e-10, key_padding_mask=pad, document_ids=docs)


def test_chunked_dense_mask_and_alibi():
    B, H, Hkv, L, D = 2, 4, 2, 77, 16
    q, k, v = make_inputs(B, H, Hkv, L, L, D, seed=4)
    table = wavelet_table(SMALL_SCALES, D, L, dtype=torch.float64)
    mask = torch.rand(B, 1, L, L, generator=torch.Generator().manual_seed(0)) > 0.2
    slopes = torch.tensor([2.0**-1, 2.0**-2, 2.0**-3, 2.0**-4], dtype=torch.float64)
    fn = lambda *a, **kw: chunked_attention(*a, chunk_size=20, **kw)  # noqa: E731
    _compare(fn, q, k, v, table, 1e-10, attn_mask=mask)
    _compare(fn, q, k, v, table, 1e-10, alibi_slopes=slopes)
    zeros = torch.zeros_like(table)  # NoPE: an all-zero table
    _compare(fn, q, k, v, zeros, 1e-10, alibi_slopes=slopes, attn_mask=mask[:1])


def test_rows_that_see_nothing_are_zero_with_finite_gradients():
    q, k, v = make_inputs(1, 2, 2, 9, 9, 8)
    pad = torch.ones(1, 9, dtype=torch.bool)
    pad[0, :4] = False
    table = wavelet_table(SMALL_SCALES, 8, 9, dtype=torch.float64)
    for fn in (reference_attention, chunked_attention):
        out = fn(q, k, v, table, key_padding_mask=pad)
        assert out[0, :, :4].abs().max() == 0
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads)
        assert grads[0][0, :, :4].abs().max() == 0


def _error_vs_truth(fn, q, k, v, table64, dtype, **kwargs):
    """Max abs error of fn in ``dtype`` against the float64 reference: output and each gradient."""
    truth = reference_attention(q, k, v, table64, **kwargs)
    grad = torch.randn(truth.shape, dtype=truth.dtype, generator=torch.Generator().manual_seed(7))
    truth_grads = torch.autograd.grad(truth, (q, k, v), grad)
    low = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*low, table64.to(dtype), **kwargs)
    grads = torch.autograd.grad(out, low, grad.to(dtype))
    return [(a.double() - b).abs().max().item() for a, b in zip((out, *grads), (truth, *truth_grads))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [17, 128, 1000])
def test_low_precision_within_twice_plain_pytorch_error(dtype, length):
    """The FlashAttention rule: error <= 2x that of plain PyTorch in the same precision."""
    q, k, v = make_inputs(1, 4, 2, length, length, 32, seed=3)
    table = wavelet_table(PAPER, 32, length, dtype=torch.float64)
    plain = _error_vs_truth(reference_attention, q, k, v, table, dtype)
    ours = _error_vs_truth(chunked_attention, q, k, v, table, dtype)
    floor = 1e-6 if dtype == torch.float32 else 1e-3
    for name, e_ours, e_plain in zip(["out", "dq", "dk", "dv"], ours, plain):
        assert e_ours <= 2 * e_plain + floor, f"{name}: {e_ours} vs plain {e_plain}"


def test_gradcheck_tiny():
    q, k, v = make_inputs(1, 2, 1, 5, 6, 4)
    pad = torch.tensor([[False, True, True, True, True, True]])
    table = wavelet_table(WavePosConfig(num_scales=2), 4, 6, dtype=torch.float64)
    fn = lambda q, k, v: chunked_attention(q, k, v, table, q_offset=1, chunk_size=2, key_padding_mask=pad)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: reference_attention(q, k, v, table, q_offset=1), (q, k, v))


def test_chunked_saves_nothing_quadratic_for_backward():
    L, D = 512, 16
    q, k, v = make_inputs(1, 2, 2, L, L, D, dtype=torch.float32)
    table = wavelet_table(PAPER, D, L)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_attention(q, k, v, table)
    assert sum(saved) < 8 * 2 * L * D  # q, k, v, out, table, lse: linear in L
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        reference_attention(q, k, v, table)
    assert max(saved) >= 2 * L * L  # the reference keeps the attention matrix


def test_dispatcher_default_override_and_errors():
    q, k, v = make_inputs(1, 2, 2, 10, 10, 8)
    table = wavelet_table(SMALL_SCALES, 8, 10, dtype=torch.float64)
    assert available_backends("cpu")[0] == "chunked"
    default = wavepos_attention(q, k, v, table)
    with use_backend("reference"):
        forced = wavepos_attention(q, k, v, table)
    torch.testing.assert_close(default, forced, rtol=0, atol=1e-12)
    torch.testing.assert_close(default, chunked_attention(q, k, v, table), rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown wavepos attention backend 'flash'.*chunked"):
        wavepos_attention(q, k, v, table, backend="flash")
    with pytest.raises(ValueError, match="table has 5 rows"):
        wavepos_attention(q, k, v, table[:5])
    with pytest.raises(ValueError, match="q_offset \\+ q_len"):
        wavepos_attention(q, k, v, table, q_offset=1)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        wavepos_attention(q, k[:, :1].expand(1, 3, 10, 8).contiguous(), v[:, :1].expand(1, 3, 10, 8), table)
    with pytest.raises(ValueError, match="key_padding_mask must be a bool"):
        wavepos_attention(q, k, v, table, key_padding_mask=torch.ones(1, 10))
    with pytest.raises(ValueError, match="4-D"):
        wavepos_attention(q[0], k, v, table)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_attention(q, k, v, table, chunk_size=0)


def test_auto_chunk_size_bounds_memory():
    from hf_wavepos.attention.chunked import CHUNK_ELEMENTS, MIN_CHUNK, PIECES, auto_chunk_size

    assert auto_chunk_size(1, 8, 2048, 2048) == 64
    assert auto_chunk_size(1, 2, 2048, 2048) == 256  # few heads: larger chunks, still 8 of them
    assert auto_chunk_size(1, 4, 512, 512) == 64  # at least PIECES chunks where possible
    assert auto_chunk_size(1, 1, 100, 100) == 64
    assert auto_chunk_size(1, 1, 40, 40) == 40  # never more than the queries
    assert auto_chunk_size(8, 32, 65536, 65536) == MIN_CHUNK  # floor: memory then grows only with Lk
    for L in (512, 2048, 8192, 32768):
        size = auto_chunk_size(1, 8, L, L)
        assert size % 64 == 0 and size * 8 * L <= max(CHUNK_ELEMENTS, MIN_CHUNK * 8 * L)
        assert L // size >= min(PIECES, L // MIN_CHUNK)
