"""Every registered backend against the float64 reference, on one table of cases.

Parametrised over `available_backends()`: each backend runs where this machine can run it (see
`attention_cases.backend_under_test`: the Triton kernels through the interpreter on CPU, FlexAttention
forward-only on CPU) and skips itself elsewhere. Shapes are odd, grouped-query, with query offsets
(decoding, chunked prefill, static caches), every mask and ALiBi.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

from attention_cases import (
    EXACT,
    PAPER,
    SMALL_SCALES,
    TWO_CHUNKS,
    assert_within_twice_plain,
    backend_under_test,
    errors_vs_truth,
    make_inputs,
)
from hf_wavepos import WavePosConfig, wavelet_table
from hf_wavepos.attention import available_backends

BACKENDS = available_backends()
COMPARED = [name for name in BACKENDS if name != "reference"]  # the reference is the truth itself
# Precisions each backend is checked in besides its main one (flex: float32 above, bfloat16 on GPU in test_flex.py)
LOW_PRECISION = [(name, dtype) for name in COMPARED for dtype in backend_under_test(name).low_precisions]
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@dataclass(frozen=True)
class Case:
    """One call: q (B, H, Lq, D), k/v (B, Hkv, Lk, D), the table of ``config`` (zeros: NoPE)."""

    B: int
    H: int
    Hkv: int
    Lq: int
    Lk: int
    D: int
    config: WavePosConfig = TWO_CHUNKS
    q_offset: int = 0
    seed: int = 0
    masks: Callable[[int, int, int], dict] = field(default=lambda B, Lq, Lk: {})
    nope: bool = False

    def inputs(self):
        q, k, v = make_inputs(self.B, self.H, self.Hkv, self.Lq, self.Lk, self.D, seed=self.seed)
        table = wavelet_table(self.config, self.D, self.Lk, dtype=torch.float64)
        if self.nope:
            table = torch.zeros_like(table)
        kwargs = dict(self.masks(self.B, self.Lq, self.Lk), q_offset=self.q_offset)
        return q, k, v, table, kwargs


def _padding(B, Lq, Lk):
    pad = torch.ones(B, Lk, dtype=torch.bool)
    pad[0, :12] = False  # left padding: rows that see no key
    pad[-1, : Lk - 3] = False  # almost all padding
    return {"key_padding_mask": pad}


def _documents(B, Lq, Lk):
    docs = torch.zeros(B, Lk, dtype=torch.long)
    docs[1, 9:] = 1
    docs[1, 20:] = 2
    return {"document_ids": docs}


def _dense(B, Lq, Lk, batch=None):
    gen = torch.Generator().manual_seed(5)
    return {"attn_mask": torch.rand(batch or B, 1, Lq, Lk, generator=gen) > 0.2}


def _alibi(B, Lq, Lk):
    return {"alibi_slopes": torch.tensor([2.0**-1, 2.0**-4], dtype=torch.float64)}


def _both(*parts):
    return lambda B, Lq, Lk: {key: val for part in parts for key, val in part(B, Lq, Lk).items()}


CASES = {
    # lengths: one query, odd, a tile boundary or not, long (band skipping for TWO_CHUNKS, none for PAPER)
    **{f"{name}-L{L}": Case(1, 2, 1, L, L, 32, config, seed=L)
       for name, config, lengths in (("two_chunks", TWO_CHUNKS, (1, 17, 128, 1000)), ("paper", PAPER, (1, 17, 127, 1000)))
       for L in lengths},
    # query offsets: decoding, a decoding block, chunked prefill and static caches (keys past the queries)
    **{name: Case(1, 2, 1, Lq, Lk, 32, q_offset=off, seed=1) for name, (Lq, Lk, off) in {
        "one_token": (1, 1, 0), "decode": (1, 80, 79), "decode_block": (5, 80, 75),
        "prefill_chunk": (24, 100, 40), "static_cache": (20, 60, 10), "static_cache_from_0": (40, 100, 0),
    }.items()},
    # masks and ALiBi (the peer method; with an all-zero table it is plain ALiBi over NoPE); small
    # scales, so that chunked skips part of the band
    **{name: Case(2, 2, 1, 33, 33, 32, SMALL_SCALES, seed=2, masks=masks, nope=name.startswith("nope")) for name, masks in {
        "padding": _padding, "documents": _documents, "padding+documents": _both(_padding, _documents),
        "padding+alibi": _both(_padding, _alibi), "documents+dense_mask": _both(_documents, _dense),
        "nope+alibi+dense_mask": _both(_alibi, lambda B, Lq, Lk: _dense(B, Lq, Lk, batch=1)),
    }.items()},
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("name", COMPARED)
def test_backend_matches_the_float64_reference(name, case):
    tester = backend_under_test(name)
    tester.require(case.Lk)
    q, k, v, table, kwargs = case.inputs()
    fn = tester.attention(case.Lk)
    if tester.dtype == torch.float64:
        errors = errors_vs_truth(fn, q, k, v, table, torch.float64, device=tester.device, gradients=tester.gradients, **kwargs)
        assert max(errors) <= EXACT, errors
    else:
        assert_within_twice_plain(q, k, v, table, tester.dtype, fn, device=tester.device, gradients=tester.gradients, **kwargs)


@pytest.mark.parametrize("length", [17, 128, 1000])
@pytest.mark.parametrize("name, dtype", LOW_PRECISION, ids=[f"{n}-{str(d)[6:]}" for n, d in LOW_PRECISION])
def test_low_precision_within_twice_plain_pytorch_error(name, dtype, length):
    """The FlashAttention rule: error <= 2x that of plain PyTorch in the same precision."""
    tester = backend_under_test(name)
    tester.require(length)
    q, k, v = make_inputs(1, 2, 1, length, length, 32, seed=3)
    table = wavelet_table(PAPER, 32, length, dtype=torch.float64)
    fn = tester.attention(length)
    assert_within_twice_plain(q, k, v, table, dtype, fn, device=tester.device, gradients=tester.gradients)


@pytest.mark.parametrize("name", BACKENDS)
def test_rows_that_see_nothing_are_zero_with_finite_gradients(name):
    tester = backend_under_test(name)
    tester.require()
    q, k, v = (t.detach().to(tester.device, tester.dtype).requires_grad_(tester.gradients)
               for t in make_inputs(1, 2, 2, 9, 9, 8))
    pad = torch.ones(1, 9, dtype=torch.bool, device=tester.device)
    pad[0, :4] = False
    table = wavelet_table(WavePosConfig(num_scales=2), 8, 9, device=tester.device, dtype=tester.dtype)
    with torch.set_grad_enabled(tester.gradients):
        out = tester.attention(9)(q, k, v, table, key_padding_mask=pad)
    assert out[0, :, :4].abs().max() == 0
    assert torch.isfinite(out).all()
    if tester.gradients:
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads)
        assert grads[0][0, :, :4].abs().max() == 0
