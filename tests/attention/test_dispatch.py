"""The dispatcher: one validation per call, the registry, the default and forced backends."""

import pytest
import torch

from attention_cases import SMALL_SCALES, make_inputs
from hf_wavepos import use_backend, wavelet_table, wavepos_attention
from hf_wavepos.attention import (
    AttentionCall,
    available_backends,
    chunked_attention,
    dispatch,
    get_backend,
    register_backend,
)


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


def test_the_call_is_validated_once_and_handed_to_the_backend(monkeypatch):
    seen, validations = [], []
    validate = dispatch.attention_call
    monkeypatch.setattr(dispatch, "attention_call", lambda *a, **kw: validations.append(1) or validate(*a, **kw))
    monkeypatch.setitem(dispatch._BACKENDS, "spy", dispatch.Backend(
        "spy", lambda call: seen.append(call) or get_backend("reference").fn(call), lambda device: True, 0,
        frozenset({"attn_mask"}),
    ))
    q, k, v = make_inputs(2, 4, 2, 3, 7, 8, requires_grad=False)
    table = wavelet_table(SMALL_SCALES, 8, 7)
    pad = torch.ones(2, 7, dtype=torch.bool)
    wavepos_attention(q, k, v, table.double(), q_offset=torch.tensor(4), key_padding_mask=pad, backend="spy")
    (call,) = seen
    assert validations == [1] and isinstance(call, AttentionCall)
    assert (call.batch, call.heads, call.kv_heads, call.q_len, call.k_len, call.head_dim) == (2, 4, 2, 3, 7, 8)
    assert call.groups == 2 and call.q_offset == 4 and call.rows == 7 and call.rows_may_be_empty
    assert call.scaling == pytest.approx(8**-0.5) and call.key_padding_mask is pad and call.q is q
    with pytest.raises(ValueError, match="'spy' does not support alibi_slopes; backends that do: .*chunked"):
        wavepos_attention(q, k, v, table.double(), alibi_slopes=torch.ones(4), backend="spy")


def test_registry_refuses_silent_overwrites():
    fn = get_backend("reference").fn
    with pytest.raises(ValueError, match="'chunked' is already registered; pass overwrite=True"):
        register_backend("chunked", fn, supports=lambda device: True)
    with pytest.raises(ValueError, match="accepts names unknown inputs \\['document_ids'\\]"):
        register_backend("other", fn, supports=lambda device: True, accepts=("document_ids",))
    assert "other" not in available_backends()


def test_gpu_backends_are_registered_for_cuda_only():
    assert {"flex", "triton"} <= set(available_backends()) and "flex" not in available_backends("cpu")
    assert "triton" not in available_backends("cpu")
    q, k, v = (t.float() for t in make_inputs(1, 2, 2, 4, 4, 16))
    with pytest.raises(ValueError, match="does not support device cpu"):
        wavepos_attention(q, k, v, torch.zeros(4, 16), backend="flex")


def test_the_call_traces_without_graph_breaks():
    """torch.compile(fullgraph=True) through validation, the call object and a backend."""
    q, k, v = make_inputs(1, 4, 2, 6, 9, 8, dtype=torch.float32, requires_grad=False)
    table = wavelet_table(SMALL_SCALES, 8, 9)
    pad = torch.ones(1, 9, dtype=torch.bool)
    pad[0, :2] = False

    def attend(q, k, v, table, pad):
        return wavepos_attention(q, k, v, table, q_offset=3, key_padding_mask=pad, backend="reference")

    compiled = torch.compile(attend, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, table, pad), attend(q, k, v, table, pad), rtol=0, atol=0)
