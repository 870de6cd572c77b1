"""The first-use self-check of the triton backend (`hf_wavepos.attention.triton.selfcheck`).

Its logic runs on the CPU with backends ``fn(call)`` injected: a deliberately wrong one must be
caught on its first call of a kind, warned about once, and replaced by the verified backend from
then on; the real kernels (through Triton's interpreter) must pass and be used. On a GPU, the
registered ``triton`` backend must pass its checks for every dtype and kernel path.
"""

import os
import dataclasses
import warnings

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # effective only if triton is not imported yet

pytest.importorskip("triton")

from hf_wavepos import WavePosConfig, wavelet_table  # noqa: E402
from hf_wavepos.attention import attention_call, chunked_attention, reference_attention, wavepos_attention  # noqa: E402
from hf_wavepos.attention.chunked import chunked_backend  # noqa: E402
from hf_wavepos.attention.reference import reference_backend  # noqa: E402
from hf_wavepos.attention.triton import interpreter_ready, triton_attention, triton_backend  # noqa: E402
from hf_wavepos.attention.triton.configs import unserved  # noqa: E402
from hf_wavepos.attention.triton.selfcheck import (  # noqa: E402
    FirstUseCheck,
    SelfCheckWarning,
    checked_triton_backend,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TABLE_CONFIG = WavePosConfig(num_scales=4)


def inputs(L=30, H=2, Hkv=1, D=32, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, h, L, D, generator=gen, dtype=dtype) for h in (H, Hkv, Hkv))
    return q, k, v, wavelet_table(TABLE_CONFIG, D, L, dtype=dtype)


def without_positions(call):
    """A plausible kernel bug: the positional term is dropped (an all-zero table)."""
    return chunked_backend(dataclasses.replace(call, table=torch.zeros_like(call.table)))


def checked(check, q, k, v, table, **kwargs):
    """The check called as the dispatcher calls a backend: with the validated call."""
    return check(attention_call(q, k, v, table, **kwargs))


def test_a_wrong_kernel_is_caught_once_per_kind_and_replaced_by_the_verified_backend():
    check = FirstUseCheck(without_positions, chunked_backend, "broken", "chunked")
    q, k, v, table = inputs()
    with pytest.warns(SelfCheckWarning, match=r"'broken' attention backend failed.*'chunked' backend") as caught:
        out = checked(check, q, k, v, table)
    assert len(caught) == 1 and "output differs" in str(caught[0].message)
    want = chunked_attention(q, k, v, table)
    assert torch.equal(out, want)
    assert (without_positions(attention_call(q, k, v, table)) - want).abs().max() > 1e-2  # the bug is visible
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same kind again: no second warning, still the fallback
        assert torch.equal(checked(check, q, k, v, table), want)
        assert torch.equal(checked(check, *inputs(L=50, seed=1)), chunked_attention(*inputs(L=50, seed=1)))
    assert list(check.verdicts.values()) == [False]
    with pytest.warns(SelfCheckWarning, match="backward"):  # another kind (gradients): checked on its own
        grads_in = [t.requires_grad_() for t in (q, k, v)]
        checked(check, *grads_in, table).sum().backward()
    assert len(check.verdicts) == 2 and not any(check.verdicts.values())


def test_an_exception_in_the_fast_backend_is_caught_by_the_check():
    def out_of_resources(call):
        raise RuntimeError("out of resource: shared memory")

    check = FirstUseCheck(out_of_resources, chunked_backend, "broken", "chunked")
    q, k, v, table = inputs()
    with pytest.warns(SelfCheckWarning, match="raised RuntimeError: out of resource"):
        out = checked(check, q, k, v, table, alibi_slopes=torch.tensor([0.5, 0.25]))
    assert torch.equal(out, chunked_attention(q, k, v, table, alibi_slopes=torch.tensor([0.5, 0.25])))


def test_calls_the_fast_backend_does_not_serve_go_to_the_verified_one_with_one_warning():
    check = FirstUseCheck(triton_backend, chunked_backend, "triton", "chunked", unserved)
    q, k, v, table = inputs(D=256)  # float32 at head dim 256: no spill-free configuration
    with pytest.warns(SelfCheckWarning, match="'triton' .* does not serve torch.float32 with head_dim 256"):
        out = checked(check, q, k, v, table)
    assert torch.equal(out, chunked_attention(q, k, v, table))
    q, k, v, table = (t.double() for t in inputs())
    with pytest.warns(SelfCheckWarning, match="does not serve torch.float64"):
        out = checked(check, q, k, v, table)
    assert torch.equal(out, chunked_attention(q, k, v, table))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per (dtype, head dim)
        checked(check, q, k, v, table)


def test_kinds_separate_paths_methods_masks_and_groups():
    q, k, v, table = inputs(L=40)
    def kind(*args, **kwargs):
        return FirstUseCheck.kind(attention_call(*args, **kwargs))

    base = kind(q, k, v, table)
    assert base == ("cpu", torch.float32, 32, "table", "forward", 2, (False, False, False))
    assert kind(q[:, :, -1:], k, v, table, q_offset=39)[4] == "decode"
    assert kind(q.requires_grad_(), k, v, table)[4] == "backward"
    q = q.detach()
    assert kind(q, k, v, table, alibi_slopes=torch.ones(2))[3] == "alibi"
    assert kind(q, k, v, table, key_padding_mask=torch.ones(2, 40, dtype=torch.bool))[-1] == (True, False, False)


def test_a_correct_fast_backend_passes_and_is_used():
    """Exact-in-float32 backends pass every path; the fast one then serves the calls."""
    calls = []

    def fast(call):
        calls.append(1)
        return reference_backend(call)

    check = FirstUseCheck(fast, chunked_backend, "fast", "chunked")
    q, k, v, table = inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = checked(check, q, k, v, table, key_padding_mask=torch.ones(2, 30, dtype=torch.bool))
        checked(check, q[:, :, -2:], k, v, table, q_offset=28)
        checked(check, *[t.requires_grad_() for t in (q, k, v)], table).sum().backward()
    assert all(check.verdicts.values()) and len(check.verdicts) == 3
    assert len(calls) == 6  # each kind: its check, then the call itself
    assert torch.equal(out, reference_attention(q.detach(), k.detach(), v.detach(), table,
                                                key_padding_mask=torch.ones(2, 30, dtype=torch.bool)))


def test_no_check_inside_a_torch_compile_trace():
    """Tracing never runs the check (no .item(), no graph break with fullgraph=True); an unchecked
    kind goes to the fast backend, a judged one keeps its verdict in the next trace. (Traceable
    stand-ins: the reference backend, and the reference without its positional term.)"""
    def broken(call):
        return reference_backend(dataclasses.replace(call, table=torch.zeros_like(call.table)))

    check = FirstUseCheck(broken, reference_backend, "broken", "reference")
    q, k, v, table = inputs()
    compiled = torch.compile(lambda *a: checked(check, *a), backend="eager", fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SelfCheckWarning)
        traced = compiled(q, k, v, table)
    assert check.verdicts == {}
    torch.testing.assert_close(traced, broken(attention_call(q, k, v, table)))
    with pytest.warns(SelfCheckWarning):
        checked(check, q, k, v, table)  # eager: checked, fails
    torch._dynamo.reset()
    torch.testing.assert_close(compiled(q, k, v, table), reference_attention(q, k, v, table))


@pytest.mark.skipif(DEVICE == "cpu" and not interpreter_ready(), reason="needs TRITON_INTERPRET=1 first")
def test_the_triton_kernels_pass_their_check_through_the_interpreter():
    check = FirstUseCheck(triton_backend, chunked_backend, "triton", "chunked")
    q, k, v, table = (t.to(DEVICE) for t in inputs(L=24, H=4, Hkv=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SelfCheckWarning)
        out = checked(check, q, k, v, table, alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625], device=DEVICE))
        checked(check, *[t.requires_grad_() for t in (q, k, v)], table).sum().backward()
    assert list(check.verdicts.values()) == [True, True]
    want = triton_attention(q.detach(), k.detach(), v.detach(), table,
                            alibi_slopes=torch.tensor([0.5, 0.25, 0.125, 0.0625], device=DEVICE))
    assert torch.equal(out, want)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, head_dim", [(torch.bfloat16, 128), (torch.float16, 64), (torch.float32, 64)])
def test_gpu_the_registered_triton_backend_passes_every_path(dtype, head_dim):
    q, k, v, table = (t.cuda() for t in inputs(L=300, H=8, Hkv=2, D=head_dim, dtype=dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SelfCheckWarning)
        wavepos_attention(q, k, v, table, backend="triton")  # forward
        wavepos_attention(q[:, :, -1:], k, v, table, q_offset=299, backend="triton")  # decode
        grads_in = [t.requires_grad_() for t in (q, k, v)]
        wavepos_attention(*grads_in, table, backend="triton").sum().backward()  # backward
    verdicts = {key: ok for key, ok in checked_triton_backend.verdicts.items()
                if key[1] == dtype and key[2] == head_dim}
    assert len(verdicts) == 3 and all(verdicts.values())
