"""FlexAttention backend against the float64 reference.

PyTorch runs FlexAttention's forward on CPU (eagerly, unfused) but has no CPU backward, so the CPU
tests check the forward; forward + every gradient in bfloat16 run on GPU (marked ``gpu``).
"""

import warnings

import pytest
import torch

pytest.importorskip("torch.nn.attention.flex_attention")

from hf_wavepos import WavePosConfig, wavelet_table  # noqa: E402
from hf_wavepos.attention import available_backends, reference_attention, wavepos_attention  # noqa: E402
from hf_wavepos.attention.flex import FLEX_MAX_BAND, flex_attention  # noqa: E402

SMALL_SCALES = WavePosConfig(num_scales=2)  # band ~ 19 distances at D = 16
PAPER = WavePosConfig()

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def make_inputs(B, H, Hkv, Lq, Lk, D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(B, h, n, D, generator=gen, dtype=torch.float64) for h, n in ((H, Lq), (Hkv, Lk), (Hkv, Lk))]


def forward_error(fn, q, k, v, table64, dtype, **kwargs):
    truth = reference_attention(q, k, v, table64, **kwargs)
    cast = {key: val.to(dtype) if torch.is_tensor(val) and val.is_floating_point() else val
            for key, val in kwargs.items()}
    with torch.no_grad():
        out = fn(q.to(dtype), k.to(dtype), v.to(dtype), table64.to(dtype), **cast)
    return (out.double() - truth).abs().max().item()


def assert_forward_within_twice_plain(q, k, v, table64, **kwargs):
    plain = forward_error(reference_attention, q, k, v, table64, torch.float32, **kwargs)
    ours = forward_error(flex_attention, q, k, v, table64, torch.float32, **kwargs)
    assert ours <= 2 * plain + 1e-6, f"{ours:.3g} vs plain PyTorch {plain:.3g}"


@pytest.mark.parametrize("length", [1, 17, 127, 128, 1000])
@pytest.mark.parametrize("config", [SMALL_SCALES, PAPER], ids=["small_scales", "paper"])
def test_forward_within_twice_plain_pytorch(length, config):
    q, k, v = make_inputs(1, 2, 2, length, length, 16, seed=length)
    table = wavelet_table(config, 16, length, dtype=torch.float64)
    assert_forward_within_twice_plain(q, k, v, table)


def test_float64_is_exact_and_the_term_is_applied():
    q, k, v = make_inputs(1, 2, 1, 60, 60, 16, seed=1)
    table = wavelet_table(SMALL_SCALES, 16, 60, dtype=torch.float64)
    with torch.no_grad():
        got = flex_attention(q, k, v, table)
        without = flex_attention(q, k, v, torch.zeros_like(table))
    torch.testing.assert_close(got, reference_attention(q, k, v, table), rtol=0, atol=1e-12)
    assert (got - without).abs().max() > 1e-2


@pytest.mark.parametrize(
    "case", ["gqa_offset", "static_cache", "padding", "documents", "dense_mask+alibi"]
)
def test_contract_cases(case):
    B, H, Hkv, Lq, Lk, D = 2, 4, 2, 45, 45, 16
    kwargs = {}
    if case == "gqa_offset":
        Lq, kwargs["q_offset"] = 5, 40
    if case == "static_cache":  # keys past the queries exist and must stay invisible
        Lq, Lk, kwargs["q_offset"] = 20, 60, 10
    q, k, v = make_inputs(B, H, Hkv, Lq, Lk, D, seed=2)
    table = wavelet_table(SMALL_SCALES, D, Lk, dtype=torch.float64)
    if case == "padding":
        pad = torch.ones(B, Lk, dtype=torch.bool)
        pad[0, :12] = False  # rows that see no key: zeros
        kwargs["key_padding_mask"] = pad
    if case == "documents":
        docs = torch.zeros(B, Lk, dtype=torch.long)
        docs[1, 20:] = 1
        docs[1, 33:] = 2
        kwargs["document_ids"] = docs
    if case == "dense_mask+alibi":
        kwargs["attn_mask"] = torch.rand(1, 1, Lq, Lk, generator=torch.Generator().manual_seed(3)) > 0.3
        kwargs["alibi_slopes"] = torch.tensor([0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)
    assert_forward_within_twice_plain(q, k, v, table, **kwargs)


def test_refuses_tables_whose_band_is_too_wide():
    """The documented rule: large scales (the 'long' preset) reach every distance; flex refuses."""
    long_table = wavelet_table(WavePosConfig.from_preset("long"), 16, FLEX_MAX_BAND + 10)
    q, k, v = (t.float() for t in make_inputs(1, 2, 2, 1, FLEX_MAX_BAND + 10, 16))
    with pytest.raises(ValueError, match="backend='triton'"):
        flex_attention(q, k, v, long_table, q_offset=FLEX_MAX_BAND + 9)
    short = wavelet_table(WavePosConfig.from_preset("long"), 16, 300)
    q, k, v = (t.float() for t in make_inputs(1, 2, 2, 300, 300, 16))
    with pytest.raises(ValueError, match="max_band=256"):
        flex_attention(q, k, v, short, max_band=256)
    with torch.no_grad(), warnings.catch_warnings():  # within the band limit it runs
        warnings.simplefilter("ignore")
        assert flex_attention(q[:, :, :40], k[:, :, :40], v[:, :, :40], short).shape == (1, 2, 40, 16)


def test_registered_for_cuda_only():
    assert "flex" in available_backends() and "flex" not in available_backends("cpu")
    q, k, v = (t.float() for t in make_inputs(1, 2, 2, 4, 4, 16))
    with pytest.raises(ValueError, match="does not support device cpu"):
        wavepos_attention(q, k, v, torch.zeros(4, 16), backend="flex")


# ---------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["oka2025", "oka2025-4k", "long"])
@pytest.mark.parametrize("length", [127, 1000])
def test_gpu_bfloat16_forward_and_gradients_within_twice_plain_pytorch(preset, length):
    config = WavePosConfig.from_preset(preset)
    q, k, v = make_inputs(2, 4, 2, length, length, 64, seed=4)
    table = wavelet_table(config, 64, length, dtype=torch.float64)
    grad = torch.randn(2, 4, length, 64, dtype=torch.float64)

    def errors(fn):
        truth_in = [t.clone().requires_grad_() for t in (q, k, v)]
        truth = reference_attention(*truth_in, table)
        truth_grads = torch.autograd.grad(truth, truth_in, grad)
        low = [t.cuda().bfloat16().requires_grad_() for t in (q, k, v)]
        out = fn(*low, table.cuda().bfloat16())
        grads = torch.autograd.grad(out, low, grad.cuda().bfloat16())
        return [(a.double().cpu() - b).abs().max().item() for a, b in zip((out, *grads), (truth, *truth_grads))]

    for name, ours, plain in zip(["out", "dq", "dk", "dv"], errors(flex_attention), errors(reference_attention)):
        assert ours <= 2 * plain + 1e-3, f"{name}: {ours:.3g} vs plain PyTorch {plain:.3g}"
