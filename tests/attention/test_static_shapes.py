"""A query offset kept as a tensor (a static cache's length under torch.compile): one graph serves
every offset, no graph break, and every backend gives the reference's values."""

import pytest
import torch
from torch._dynamo.utils import counters

from hf_wavepos import WavePosConfig, wavelet_table
from hf_wavepos.attention import attention_call, reference_attention
from hf_wavepos.attention.chunked import chunked_backend
from hf_wavepos.attention.reference import reference_backend
from hf_wavepos.positions import alibi_slopes
from tests.attention.test_chunked import make_inputs

B, H, HKV, LK, D = 2, 4, 2, 12, 16
TABLE = wavelet_table(WavePosConfig(num_scales=2), D, LK)


def _inputs(Lq, extras):
    q, k, v = (t.detach().float() for t in make_inputs(B, H, HKV, Lq, LK, D))
    kwargs = {}
    if "padding" in extras:
        mask = torch.ones(B, LK, dtype=torch.bool)
        mask[1, :3] = False
        kwargs["key_padding_mask"] = mask
    if "alibi" in extras:
        kwargs["alibi_slopes"] = alibi_slopes(H)
    if "documents" in extras:
        kwargs["document_ids"] = (torch.arange(LK) >= 5).long().expand(B, LK)
    return q, k, v, kwargs


def _compiled(backend):
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def step(q, k, v, offset, kwargs):
        return backend(attention_call(q, k, v, TABLE, q_offset=offset, **kwargs))

    torch._dynamo.reset()
    counters.clear()
    return torch.compile(step, backend=counting_backend, fullgraph=True), graphs


@pytest.mark.parametrize("backend", [chunked_backend, reference_backend], ids=["chunked", "reference"])
@pytest.mark.parametrize("extras", [(), ("padding", "alibi"), ("documents",)], ids=["plain", "padding_alibi", "documents"])
@pytest.mark.parametrize("Lq", [1, 3])
def test_one_graph_for_every_offset_equal_to_the_reference(backend, extras, Lq):
    q, k, v, kwargs = _inputs(Lq, extras)
    step, graphs = _compiled(backend)
    for offset in range(0, LK - Lq + 1, 2):
        got = step(q, k, v, torch.tensor(offset), kwargs)
        want = reference_attention(q.double(), k.double(), v.double(), TABLE.double(), q_offset=offset,
                                   **{n: t.double() if t.is_floating_point() else t for n, t in kwargs.items()})
        torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    assert len(graphs) == 1 and sum(counters["graph_break"].values()) == 0


def test_tensor_offsets_outside_compile_are_read_once_and_validated():
    q, k, v, _ = _inputs(2, ())
    call = attention_call(q, k, v, TABLE, q_offset=torch.tensor([4]))
    assert call.q_offset == 4 and isinstance(call.q_offset, int) and not call.has_tensor_offset
    with pytest.raises(ValueError, match="q_offset must be an integer scalar"):
        attention_call(q, k, v, TABLE, q_offset=torch.tensor(4.0))
    with pytest.raises(ValueError, match="q_offset must be an integer scalar"):
        attention_call(q, k, v, TABLE, q_offset=torch.tensor([1, 2]))
    short = TABLE[:8]

    def traced(q, k, v, offset):
        return attention_call(q, k, v, short, q_offset=offset).q

    with pytest.raises(Exception, match="table .*must cover every distance below the key length 12"):
        torch.compile(traced, backend="eager", fullgraph=True)(q, k, v, torch.tensor(2))


def test_triton_backend_serves_traced_tensor_offsets_without_graph_breaks():
    """The CUDA default backend's Python path: a traced static-cache step compiles once (here with
    the kernels' interpreter; the step itself is computed with shapes only)."""
    pytest.importorskip("triton")
    from hf_wavepos.attention.triton import interpreter_ready, triton_backend

    if not interpreter_ready():
        pytest.skip("needs TRITON_INTERPRET=1 before triton is imported (tests/conftest.py sets it)")
    q, k, v, kwargs = _inputs(1, ("padding",))
    step, graphs = _compiled(triton_backend)
    for offset in (3, 4, 9):
        want = reference_attention(q, k, v, TABLE, q_offset=offset, **kwargs)
        torch.testing.assert_close(step(q, k, v, torch.tensor(offset), kwargs), want, rtol=1e-5, atol=1e-5)
    assert len(graphs) == 1 and sum(counters["graph_break"].values()) == 0
