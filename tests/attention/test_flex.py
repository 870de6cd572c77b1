"""What is particular to the FlexAttention backend: exact float64, the band rule, bfloat16 on GPU.

PyTorch runs FlexAttention's forward on CPU (eagerly, unfused) but has no CPU backward, so the CPU
tests check the forward; its agreement with the reference on every case of the contract is in
test_conformance.py. Forward + every gradient in bfloat16 run on GPU (marked ``gpu``).
"""

import warnings

import pytest
import torch

pytest.importorskip("torch.nn.attention.flex_attention")

from attention_cases import SMALL_SCALES, assert_within_twice_plain, make_inputs  # noqa: E402
from hf_wavepos import WavePosConfig, wavelet_table  # noqa: E402
from hf_wavepos.attention import reference_attention  # noqa: E402
from hf_wavepos.attention.flex import FLEX_MAX_BAND, flex_attention  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def test_float64_is_exact_and_the_term_is_applied():
    q, k, v = make_inputs(1, 2, 1, 60, 60, 16, seed=1, requires_grad=False)
    table = wavelet_table(SMALL_SCALES, 16, 60, dtype=torch.float64)
    with torch.no_grad():
        got = flex_attention(q, k, v, table)
        without = flex_attention(q, k, v, torch.zeros_like(table))
    torch.testing.assert_close(got, reference_attention(q, k, v, table), rtol=0, atol=1e-12)
    assert (got - without).abs().max() > 1e-2


def test_refuses_tables_whose_band_is_too_wide():
    """The documented rule: large scales (the 'long' preset) reach every distance; flex refuses."""
    long_table = wavelet_table(WavePosConfig.from_preset("long"), 16, FLEX_MAX_BAND + 10)
    q, k, v = (t.float() for t in make_inputs(1, 2, 2, 1, FLEX_MAX_BAND + 10, 16, requires_grad=False))
    with pytest.raises(ValueError, match="backend='triton'"):
        flex_attention(q, k, v, long_table, q_offset=FLEX_MAX_BAND + 9)
    short = wavelet_table(WavePosConfig.from_preset("long"), 16, 300)
    q, k, v = (t.float() for t in make_inputs(1, 2, 2, 300, 300, 16, requires_grad=False))
    with pytest.raises(ValueError, match="max_band=256"):
        flex_attention(q, k, v, short, max_band=256)
    with torch.no_grad(), warnings.catch_warnings():  # within the band limit it runs
        warnings.simplefilter("ignore")
        assert flex_attention(q[:, :, :40], k[:, :, :40], v[:, :, :40], short).shape == (1, 2, 40, 16)


# ---------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["oka2025", "oka2025-4k", "long"])
@pytest.mark.parametrize("length", [127, 1000])
def test_gpu_bfloat16_forward_and_gradients_within_twice_plain_pytorch(preset, length):
    config = WavePosConfig.from_preset(preset)
    q, k, v = make_inputs(2, 4, 2, length, length, 64, seed=4, requires_grad=False)
    table = wavelet_table(config, 64, length, dtype=torch.float64)
    assert_within_twice_plain(q, k, v, table, torch.bfloat16, flex_attention, device="cuda")
