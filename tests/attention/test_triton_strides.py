"""Triton kernels on the q, k, v views transformers models hand over, forward and gradients.

GPT-NeoX cuts q, k, v out of one fused ``query_key_value`` projection and GPT-2 splits ``c_attn``:
non-dense views whose ``torch.empty_like`` is dense with *other* strides. Llama hands transposed
(dense) views with grouped-query heads. Each case runs a real tiny model of that architecture,
records the tensors its attention module passes to the dispatcher, and checks the kernels on
exactly those views (and slices, expanded GQA keys and a transposed head dimension) against the
float64 reference: output and dq, dk, dv within twice the error of plain PyTorch in float32.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1 set
before triton is first imported: tests/conftest.py does it; otherwise this file re-runs itself in
a fresh process). On a CUDA machine the same cases run compiled.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # effective only if triton is not imported yet

pytest.importorskip("triton")

from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

import hf_wavepos.models.common as model_common  # noqa: E402
from hf_wavepos import apply_wavepos  # noqa: E402
from hf_wavepos.attention import reference_attention  # noqa: E402
from hf_wavepos.attention.triton import interpreter_ready, triton_attention, triton_decode_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS_RUN_HERE = DEVICE == "cuda" or interpreter_ready()
kernel_test = pytest.mark.skipif(
    not KERNELS_RUN_HERE, reason="triton was imported before TRITON_INTERPRET=1: run in a fresh process below"
)
VOCAB = 64


@pytest.mark.skipif(KERNELS_RUN_HERE, reason="the kernel tests run in this process")
def test_kernels_in_a_fresh_interpreter_process():
    env = dict(os.environ, TRITON_INTERPRET="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout


def tiny_model(arch: str) -> torch.nn.Module:
    """Head dim 32 (two table chunks of 16); Llama with grouped-query attention (4 heads, 2 kv)."""
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=1,
                                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                             pad_token_id=0))
    elif arch == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=1,
                                                 num_attention_heads=4, intermediate_size=64, attention_dropout=0.0,
                                                 hidden_dropout=0.0, pad_token_id=0))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=128, n_layer=1, n_head=4, n_positions=64,
                                           attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, pad_token_id=0))
    return apply_wavepos(model, "oka2025")


def attention_call(arch: str, monkeypatch, length: int = 37, left_pad: int = 0):
    """(q, k, v, table, kwargs): what the model's first attention module hands the dispatcher.

    q, k, v are the module's own views (float32, on DEVICE, part of its autograd graph); with
    ``left_pad`` the first row is left-padded, so transformers passes a dense 4-D mask too.
    """
    calls = []

    def record(q, k, v, table, *, backend=None, **kwargs):
        calls.append((q, k, v, table, kwargs))
        return reference_attention(q, k, v, table, **kwargs)

    monkeypatch.setattr(model_common, "wavepos_attention", record)
    ids = torch.randint(1, VOCAB, (2, length), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[0, :left_pad] = 0
    model = tiny_model(arch).to(DEVICE)
    model(input_ids=ids, attention_mask=mask if left_pad else None, use_cache=False)  # a cache copies k, v
    q, k, v, table, kwargs = calls[0]
    return q, k, v, table, kwargs


def is_dense(t: torch.Tensor) -> bool:
    """True when t covers its memory without gaps (empty_like then keeps its strides)."""
    return torch.empty_like(t).stride() == t.stride()


def errors(out, grads, truth, truth_grads):
    return [(a.detach().double().cpu() - b).abs().max().item() for a, b in zip((out, *grads), (truth, *truth_grads))]


def assert_within_twice_plain(q, k, v, table, **kwargs):
    """Kernels on the views q, k, v (float32, any strides) vs float64, and vs plain PyTorch on them."""
    cpu64 = {key: (val.cpu().double() if val.is_floating_point() else val.cpu()) if torch.is_tensor(val) else val
             for key, val in kwargs.items()}
    leaves = [t.detach().cpu().double().requires_grad_() for t in (q, k, v)]
    truth = reference_attention(*leaves, table.detach().cpu().double(), **cpu64)
    grad = torch.randn(truth.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    truth_grads = torch.autograd.grad(truth, leaves, grad)
    results = {}
    for name, fn in (("plain", reference_attention), ("triton", triton_attention)):
        out = fn(q, k, v, table, **kwargs)
        grads = torch.autograd.grad(out, (q, k, v), grad.to(q.device, q.dtype), retain_graph=True)
        assert all(g.shape == t.shape for g, t in zip(grads, (q, k, v)))
        results[name] = errors(out, grads, truth, truth_grads)
    for what, ours, plain in zip(["out", "dq", "dk", "dv"], results["triton"], results["plain"]):
        assert ours <= 2 * plain + 1e-6, f"{what}: {ours:.3g} vs plain PyTorch {plain:.3g}"


@kernel_test
@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2"])
def test_views_from_real_attention_modules(arch, monkeypatch):
    q, k, v, table, kwargs = attention_call(arch, monkeypatch)
    if arch == "llama":  # transposed projections: dense, grouped-query heads
        assert is_dense(q) and not q.is_contiguous() and k.shape[1] * 2 == q.shape[1]
    else:  # chunks of one fused projection: not dense, sharing storage
        assert not any(is_dense(t) for t in (q, k, v))
        assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
    assert_within_twice_plain(q, k, v, table, **kwargs)


@kernel_test
def test_views_with_left_padding_and_the_dense_mask_transformers_builds(monkeypatch):
    """GPT-2's split views with a padded row: transformers' 4-D mask (possibly an expanded view)."""
    q, k, v, table, kwargs = attention_call("gpt2", monkeypatch, length=29, left_pad=9)
    assert kwargs["attn_mask"] is not None
    assert_within_twice_plain(q, k, v, table, **kwargs)


@kernel_test
def test_slices_expanded_keys_and_a_transposed_head_dim(monkeypatch):
    """Query slices (a chunked prefill), keys/values expanded across heads with stride 0, and a
    query whose last dimension is not contiguous (copied by the kernels' wrapper)."""
    q, k, v, table, kwargs = attention_call("gpt_neox", monkeypatch, length=40)
    tail = q[:, :, 13:]  # the last 27 queries over all 40 keys
    assert_within_twice_plain(tail, k, v, table, **dict(kwargs, q_offset=13))
    expanded_k, expanded_v = (t[:, :1].expand(-1, q.shape[1], -1, -1) for t in (k, v))
    assert expanded_k.stride(1) == 0
    assert_within_twice_plain(q, expanded_k, expanded_v, table, **kwargs)
    flipped = q.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_()
    assert flipped.stride(-1) != 1
    assert_within_twice_plain(flipped, k, v, table, **kwargs)


@kernel_test
@pytest.mark.parametrize("arch", ["gpt_neox", "gpt2"])
def test_decoding_kernel_on_sliced_fused_views(arch, monkeypatch):
    """The last query (a slice of a fused view) over the cache, split-K kernel, vs float64."""
    q, k, v, table, kwargs = attention_call(arch, monkeypatch, length=45)
    q, k, v = (t.detach() for t in (q, k, v))
    last = q[:, :, -1:]
    want = reference_attention(*(t.cpu().double() for t in (last, k, v, table)), q_offset=44)
    plain = reference_attention(last, k, v, table, q_offset=44)
    got = triton_decode_attention(last, k, v, table, q_offset=44, n_splits=3, block_n=16)
    assert (got.cpu().double() - want).abs().max() <= 2 * (plain.cpu().double() - want).abs().max() + 1e-6
