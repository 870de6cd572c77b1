"""What is particular to the chunked backend: exact gradients, memory, chunk sizes.

Its agreement with the reference on every case of the contract is in test_conformance.py.
"""

import torch

from attention_cases import PAPER, make_inputs
from hf_wavepos import WavePosConfig, wavelet_table
from hf_wavepos.attention import chunked_attention, reference_attention


def test_gradcheck_tiny():
    q, k, v = make_inputs(1, 2, 1, 5, 6, 4)
    pad = torch.tensor([[False, True, True, True, True, True]])
    table = wavelet_table(WavePosConfig(num_scales=2), 4, 6, dtype=torch.float64)
    fn = lambda q, k, v: chunked_attention(q, k, v, table, q_offset=1, chunk_size=2, key_padding_mask=pad)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


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


def test_band_workspace_rows_are_aligned_and_the_skew_view_reads_qp_by_distance():
    from hf_wavepos.attention.chunks import ROW_ALIGN, BandWorkspace, ScratchBuffers

    class Geo:  # a chunk of c = 5 queries whose band is W = 9 keys, inside a widest band of 13
        size, width = 5, 9

    space = BandWorkspace(heads=2, size=5, max_width=13, scratch=ScratchBuffers(torch.float64, torch.device("cpu")))
    buffer = space.logits()
    assert buffer.stride(1) % ROW_ALIGN == 0 and buffer.shape[-1] >= 13 + 5 - 1
    qp = torch.randn(2 * 5, 9, dtype=torch.float64)  # QP[i, u] = q_i . p[W - 1 - u]
    space.band_columns(buffer, Geo).copy_(qp)
    skew = space.skew_view(buffer, Geo)  # [h, i, j]: key kb + j of query i, distance W - c + i - j
    for i in range(5):
        for j in range(9):
            distance = 9 - 5 + i - j
            expected = qp.view(2, 5, 9)[:, i, 9 - 1 - distance] if distance >= 0 else torch.full((2,), float("-inf"))
            assert torch.equal(skew[:, i, j], expected.to(torch.float64))


def test_transposed_views_in_and_a_transposed_output_gradient_match_the_float64_reference():
    """What a Llama model hands the backend: q, k, v as (B, L, heads, D) projections seen as
    (B, heads, L, D), and an output gradient that is such a view too (odd length, grouped heads)."""
    B, H, Hkv, L, D = 2, 6, 2, 45, 8
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, L, n, D, generator=gen, dtype=torch.float64).transpose(1, 2) for n in (H, Hkv, Hkv))
    grad = torch.randn(B, L, H, D, generator=gen, dtype=torch.float64).transpose(1, 2)
    table = wavelet_table(WavePosConfig(num_scales=2), D, L, dtype=torch.float64)
    results = []
    for fn in (reference_attention, lambda *a: chunked_attention(*a, chunk_size=7)):
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, table)
        results.append([out, *torch.autograd.grad(out, leaves, grad)])
    for ours, truth in zip(*reversed(results)):
        assert (ours - truth).abs().max().item() <= 1e-10


def test_query_chunks_split_any_strides_with_scale():
    from hf_wavepos.attention.chunks import QueryChunks

    x = torch.randn(2, 11, 3, 5, dtype=torch.float64).transpose(1, 2)  # (B, H, L, X) view
    parts = QueryChunks(11, 4).split(x, 0.5)
    assert [p.shape[2] for p in parts] == [4, 4, 3] and all(p.is_contiguous() for p in parts)
    assert torch.equal(torch.cat(parts, dim=2), x * 0.5)
    assert torch.equal(torch.cat(QueryChunks(11, 4).split(x), dim=2), x)
