"""The decoding path (few queries over a KV cache) against the float64 reference."""

import dataclasses
import gc

import pytest
import torch

from hf_wavepos import wavelet_table
from hf_wavepos.attention import attention_call, chunked_attention, reference_attention
from hf_wavepos.attention.chunked import chunked_backend
from hf_wavepos.attention.decode import DECODE_MAX_QUERIES, _REVERSED_TABLES, decode_attention_call, reversed_table_rows
from attention_cases import EXACT, PAPER, SMALL_SCALES, assert_within_twice_plain, errors_vs_truth, make_inputs


def decode(q, k, v, table, **contract):
    return decode_attention_call(attention_call(q, k, v, table, **contract))


def assert_exact(q, k, v, table, **contract):
    """Output and gradients of the decoding path in float64 within `EXACT` of the reference."""
    errors = errors_vs_truth(decode, q, k, v, table, torch.float64, device="cpu", **contract)
    assert max(errors) <= EXACT, errors


def masks(B, Lq, Lk, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pad = torch.ones(B, Lk, dtype=torch.bool)
    pad[0, : Lk // 3] = False  # left padding
    docs = torch.zeros(B, Lk, dtype=torch.long)
    docs[-1, Lk // 2 :] = 1
    dense = torch.rand(B, 1, Lq, Lk, generator=gen) > 0.3
    dense[..., -1] = True
    return {"padding": {"key_padding_mask": pad}, "documents": {"document_ids": docs}, "dense": {"attn_mask": dense}}


@pytest.mark.parametrize("Lq, Lk, q_offset", [(1, 1, 0), (1, 300, 299), (3, 300, 297), (1, 300, 150), (5, 64, 0), (16, 40, 24)])
@pytest.mark.parametrize("config", [PAPER, SMALL_SCALES], ids=["paper", "small_scales"])
def test_decode_float64_matches_reference(Lq, Lk, q_offset, config):
    """One step (the fast path), several queries, static caches (keys past the queries), GQA."""
    q, k, v = make_inputs(2, 6, 3, Lq, Lk, 16, seed=Lk)
    table = wavelet_table(config, 16, max(Lk, 1), dtype=torch.float64)
    assert_exact(q, k, v, table, q_offset=q_offset)


@pytest.mark.parametrize("case", ["padding", "documents", "dense", "alibi", "nope"])
@pytest.mark.parametrize("Lq", [1, 4])
def test_decode_masks_alibi_nope(case, Lq):
    B, H, Hkv, Lk, D = 2, 4, 2, 90, 16
    q, k, v = make_inputs(B, H, Hkv, Lq, Lk, D, seed=3)
    table = wavelet_table(SMALL_SCALES, D, Lk, dtype=torch.float64)
    kwargs = masks(B, Lq, Lk).get(case, {})
    if case == "alibi":
        kwargs = {"alibi_slopes": torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)}
    if case == "nope":
        table = torch.zeros_like(table)
    assert_exact(q, k, v, table, q_offset=Lk - Lq, **kwargs)


def test_decode_rows_that_see_nothing_are_zero_with_finite_gradients():
    q, k, v = make_inputs(2, 2, 2, 1, 9, 8)
    pad = torch.ones(2, 9, dtype=torch.bool)
    pad[0] = False  # batch row 0 sees no key at all
    table = wavelet_table(SMALL_SCALES, 8, 9, dtype=torch.float64)
    out = decode(q, k, v, table, q_offset=8, key_padding_mask=pad)
    assert out[0].abs().max() == 0
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    assert grads[0][0].abs().max() == 0
    torch.testing.assert_close(out, reference_attention(q, k, v, table, q_offset=8, key_padding_mask=pad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("Lq", [1, 7])
def test_decode_low_precision_within_twice_plain_pytorch_error(dtype, Lq):
    """The FlashAttention rule for the decoding path: error <= 2x that of plain PyTorch."""
    Lk = 1000
    q, k, v = make_inputs(1, 4, 2, Lq, Lk, 32, seed=5)
    table = wavelet_table(PAPER, 32, Lk, dtype=torch.float64)
    assert_within_twice_plain(q, k, v, table, dtype, decode, device="cpu", q_offset=Lk - Lq)


def test_decode_accepts_a_tensor_offset_and_non_contiguous_cache():
    """q_offset as a one-element tensor (no .item() in the path) and a cache slice with a stride."""
    q, k, v = make_inputs(1, 4, 2, 2, 200, 16, seed=6)
    table = wavelet_table(SMALL_SCALES, 16, 256, dtype=torch.float64)
    big_k, big_v = (torch.cat([t.detach(), torch.randn_like(t)], dim=2) for t in (k, v))  # static cache, 400 slots
    call = attention_call(q, big_k[:, :, :200], big_v[:, :, :200], table, q_offset=150)
    want = reference_attention(q, k, v, table, q_offset=150)
    torch.testing.assert_close(decode_attention_call(call), want, rtol=0, atol=1e-12)
    tensor_offset = dataclasses.replace(call, q_offset=torch.tensor(150))
    torch.testing.assert_close(decode_attention_call(tensor_offset), want, rtol=0, atol=1e-12)


def test_decode_step_traces_without_graph_breaks():
    """torch.compile (dynamo, fullgraph) traces a step, also with a tensor q_offset."""
    q, k, v = (t.detach() for t in make_inputs(1, 4, 2, 1, 64, 16, dtype=torch.float32, seed=7))
    table = wavelet_table(SMALL_SCALES, 16, 64)
    call = attention_call(q, k, v, table, q_offset=63)
    torch._dynamo.reset()
    step = torch.compile(lambda c: decode_attention_call(c), backend="eager", fullgraph=True)
    torch.testing.assert_close(step(call), decode_attention_call(call))
    tensor_offset = dataclasses.replace(call, q_offset=torch.tensor(63))
    torch.testing.assert_close(step(tensor_offset), decode_attention_call(call))


def test_reversed_table_cache_follows_the_table():
    table = wavelet_table(SMALL_SCALES, 8, 32).clone()
    rows = reversed_table_rows(table, torch.float32)
    assert reversed_table_rows(table, torch.float32) is rows  # cached
    torch.testing.assert_close(rows, table.flip(0), rtol=0, atol=0)
    table[0] += 1.0  # modified in place: recomputed
    torch.testing.assert_close(reversed_table_rows(table, torch.float32), table.flip(0), rtol=0, atol=0)
    count = len(_REVERSED_TABLES)
    del table, rows
    gc.collect()
    assert len(_REVERSED_TABLES) == count - 1  # dropped with the table


def test_chunked_backend_routes_few_queries_to_decode():
    q, k, v = (t.detach() for t in make_inputs(1, 4, 2, DECODE_MAX_QUERIES, 100, 16, dtype=torch.float32))
    table = wavelet_table(SMALL_SCALES, 16, 100)
    call = attention_call(q, k, v, table, q_offset=100 - DECODE_MAX_QUERIES)
    torch.testing.assert_close(chunked_backend(call), decode_attention_call(call), rtol=0, atol=0)
    chunked = chunked_attention(q, k, v, table, q_offset=100 - DECODE_MAX_QUERIES, chunk_size=8)  # explicit: chunks
    torch.testing.assert_close(chunked, decode_attention_call(call), rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("Lq", [1, 5])
def test_decode_non_contiguous_projections_match_the_reference_and_the_cache(Lq):
    """q, k, v as transposed views of the projections (what a model passes without a cache): the
    float64 reference's values and gradients, and bitwise the result of the same keys as a
    contiguous cache (a model's logits do not depend on whether a cache was used)."""
    B, H, Hkv, Lk, D = 2, 6, 2, 77, 16
    gen = torch.Generator().manual_seed(11)
    q = torch.randn(B, Lq, H, D, generator=gen, dtype=torch.float64).transpose(1, 2)
    k, v = (torch.randn(B, Lk, Hkv, D, generator=gen, dtype=torch.float64).transpose(1, 2) for _ in range(2))
    table = wavelet_table(PAPER, D, Lk, dtype=torch.float64)
    assert_exact(q, k, v, table, q_offset=Lk - Lq)
    for dtype in (torch.float32, torch.float64):
        views = [t.to(dtype) for t in (q, k, v)]
        assert not views[1].is_contiguous()
        cached = [views[0], views[1].contiguous(), views[2].contiguous()]
        got, want = (decode(*x, table.to(dtype), q_offset=Lk - Lq) for x in (views, cached))
        assert torch.equal(got, want)
