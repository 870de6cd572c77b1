"""Shared inputs, presets and error measures of the attention tests, and how each backend is run.

The rule is FlashAttention's: a backend's error against the float64 truth (`reference_attention`)
is at most twice that of plain PyTorch (the reference itself) in the same precision, for the
output and every gradient. Backends that compute float64 are checked in float64 instead, to 1e-10.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from hf_wavepos import WavePosConfig
from hf_wavepos.attention import AttentionCall, attention_call, get_backend, reference_attention

PAPER = WavePosConfig()  # scales up to 128 at D = 16 or 32: the term reaches every distance here
SMALL_SCALES = WavePosConfig(num_scales=2)  # support ~ 24: exercises band skipping at short L
# D = 32 in chunks of 16: scales 1, 2 (support 19) | scales 4, 8 (support 53). Triton tiles of 16
# see blocks with both chunks, with only the second, and far tiles with none.
TWO_CHUNKS = WavePosConfig(num_scales=4)

EXACT = 1e-10  # float64 backends against the float64 reference
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the GPU backends run by default


def make_inputs(B, H, Hkv, Lq, Lk, D, dtype=torch.float64, seed=0, requires_grad=True):
    """q (B, H, Lq, D), k and v (B, Hkv, Lk, D), standard normal, seeded."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Lq, D, generator=gen, dtype=dtype)
    k = torch.randn(B, Hkv, Lk, D, generator=gen, dtype=dtype)
    v = torch.randn(B, Hkv, Lk, D, generator=gen, dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _moved(kwargs: dict, device, dtype) -> dict:
    """Tensors of ``kwargs`` on ``device``, floating ones in ``dtype``; other values unchanged."""
    out = {}
    for key, val in kwargs.items():
        if torch.is_tensor(val):
            val = val.to(device, dtype) if val.is_floating_point() else val.to(device)
        out[key] = val
    return out


def errors_vs_truth(fn, q, k, v, table64, dtype, *, device=None, gradients=True, **kwargs) -> list[float]:
    """Max abs error of ``fn`` run in ``dtype`` on ``device`` against the float64 reference.

    Returns [out, dq, dk, dv] errors ([out] without ``gradients``). q, k, v, table64 and the
    floating kwargs are float64 on the CPU; ``fn`` has `wavepos_attention`'s arguments; ``device``
    defaults to `DEVICE`.
    """
    device = device or DEVICE
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    truth = reference_attention(*leaves, table64, **_moved(kwargs, "cpu", torch.float64))
    low = [t.detach().to(device, dtype).requires_grad_(gradients) for t in (q, k, v)]
    extra = _moved(kwargs, device, dtype)
    if not gradients:
        with torch.no_grad():
            out = fn(*low, table64.to(device, dtype), **extra)
        return [(out.double().cpu() - truth).abs().max().item()]
    grad = torch.randn(truth.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    truth_grads = torch.autograd.grad(truth, leaves, grad)
    out = fn(*low, table64.to(device, dtype), **extra)
    grads = torch.autograd.grad(out, low, grad.to(device, dtype))
    return [(a.double().cpu() - b).abs().max().item() for a, b in zip((out, *grads), (truth, *truth_grads))]


def assert_within_twice_plain(q, k, v, table64, dtype, fn, *, device=None, gradients=True, floor=None, **kwargs):
    """The FlashAttention rule for ``fn`` in ``dtype`` on ``device``: its errors against the float64
    truth are at most twice those of plain PyTorch (the reference) there, plus ``floor`` (default
    1e-6 in float32, else 1e-3)."""
    plain = errors_vs_truth(reference_attention, q, k, v, table64, dtype, device=device, gradients=gradients, **kwargs)
    ours = errors_vs_truth(fn, q, k, v, table64, dtype, device=device, gradients=gradients, **kwargs)
    if floor is None:
        floor = 1e-6 if dtype == torch.float32 else 1e-3
    for name, e_ours, e_plain in zip(["out", "dq", "dk", "dv"], ours, plain):
        assert e_ours <= 2 * e_plain + floor, f"{name}: {e_ours:.3g} vs plain PyTorch {e_plain:.3g}"


# ------------------------------------------------------------------------- backends under test
def _interpreter_ready() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    from hf_wavepos.attention.triton import interpreter_ready

    return interpreter_ready()


@dataclass
class BackendUnderTest:
    """How the conformance suite runs one registered backend here.

    ``device`` None means it cannot run on this machine (``skip`` says why). ``dtype`` is the
    precision it is checked in (float64: to `EXACT`; otherwise the 2x rule), ``low_precisions``
    the further ones it is checked in (the 2x rule); ``gradients`` False checks the forward only; ``max_len`` bounds the key length of the cases it runs (the Triton
    interpreter is slow); ``fn(call, length)`` computes one call, ``length`` choosing tile options.
    """

    name: str
    device: str | None
    dtype: torch.dtype = torch.float32
    gradients: bool = True
    low_precisions: tuple[torch.dtype, ...] = ()
    max_len: int = 1 << 30
    fn: Callable[[AttentionCall, int], torch.Tensor] | None = None
    skip: str = ""

    def attention(self, length: int) -> Callable[..., torch.Tensor]:
        """A function with `wavepos_attention`'s arguments that runs this backend on a call."""
        fn = self.fn or (lambda call, _: get_backend(self.name).fn(call))
        return lambda q, k, v, table, **kw: fn(attention_call(q, k, v, table, **kw), length)

    def require(self, length: int = 0) -> None:
        """Skip the running test where this backend cannot serve it here."""
        if self.device is None:
            pytest.skip(self.skip)
        if length > self.max_len:
            pytest.skip(f"{self.name}: key length {length} > {self.max_len} is too slow here")


def _triton(cuda: bool) -> BackendUnderTest:
    from hf_wavepos.attention.triton import triton_backend

    if cuda:
        return BackendUnderTest("triton", "cuda", low_precisions=(torch.float16, torch.bfloat16))
    if not _interpreter_ready():
        return BackendUnderTest(
            "triton", None, skip="triton was imported before TRITON_INTERPRET=1: see test_triton.py"
        )
    # The interpreter is slow: tiles of 16 up to L = 20, fewer and larger ones (32) past it; it cannot
    # multiply bfloat16 (triton-lang/triton#11584).
    return BackendUnderTest(
        "triton", "cpu", low_precisions=(torch.float16,), max_len=300,
        fn=lambda call, length: triton_backend(call, block=16 if length <= 20 else 32, chunk=16),
    )


@functools.lru_cache(maxsize=None)
def backend_under_test(name: str) -> BackendUnderTest:
    """The way ``name`` runs on this machine (defaults for a backend the table does not know)."""
    from hf_wavepos.attention.chunked import chunked_backend
    from hf_wavepos.attention.decode import DECODE_MAX_QUERIES

    cuda = torch.cuda.is_available()
    if name == "reference":
        return BackendUnderTest(name, "cpu", dtype=torch.float64)
    if name == "chunked":  # an odd chunk size (several chunks, a short last one); long, or few
        # queries (the decoding path, `hf_wavepos.attention.decode`): the default
        return BackendUnderTest(
            name, "cpu", dtype=torch.float64, low_precisions=(torch.float32, torch.bfloat16),
            fn=lambda call, length: chunked_backend(
                call, chunk_size=29 if length <= 300 and call.q_len > DECODE_MAX_QUERIES else None
            ),
        )
    if name == "flex":  # PyTorch has FlexAttention's forward on CPU (eager), no CPU backward
        return BackendUnderTest(name, "cuda" if cuda else "cpu", gradients=cuda)
    if name == "triton":
        return _triton(cuda)
    backend = get_backend(name)
    for device in ("cuda", "cpu") if cuda else ("cpu",):
        if backend.supports(torch.device(device)):
            return BackendUnderTest(name, device)
    return BackendUnderTest(name, None, skip=f"{name} supports no device of this machine")
