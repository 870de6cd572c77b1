import math

import pytest
import torch

from hf_wavepos import WavePosConfig, register_wavelet, wavelet_support, wavelet_table
from hf_wavepos.basis import log_n_scale
from hf_wavepos.wavelets import CUTOFF, get_wavelet, registered_wavelets
from hf_wavepos.basis import column_supports, skip_cutoff, table_support

CLOSED_FORMS = {
    "ricker": lambda t: (1 - t * t) * math.exp(-t * t / 2),
    "gaussian": lambda t: math.exp(-t * t),
    "haar": lambda t: 1.0 if -0.5 <= t < 0 else (-1.0 if -1 <= t < -0.5 else 0.0),
    "morlet": lambda t: math.exp(-t * t) * math.cos(5.0 * t),
}


@pytest.mark.parametrize("wavelet", sorted(CLOSED_FORMS))
@pytest.mark.parametrize("sign", ["m-n", "n-m"])
@pytest.mark.filterwarnings("ignore:wavelet='haar' is the Haar reflected")  # both conventions, on purpose
def test_table_matches_closed_form(wavelet, sign):
    config = WavePosConfig(wavelet=wavelet, num_scales=4, sign_convention=sign)
    head_dim, length = 12, 40
    table = wavelet_table(config, head_dim, length, dtype=torch.float64)
    assert table.shape == (length, head_dim)
    for r in range(length):
        for j in range(head_dim):
            a, b = 2.0 ** (j // 3), j % 3  # scale-major: 4 scales x 3 shifts
            x = r if sign == "m-n" else -r
            assert table[r, j].item() == pytest.approx(CLOSED_FORMS[wavelet]((x - b) / a), abs=1e-15)


def test_paper_default_table_values():
    table = wavelet_table(WavePosConfig(), 128, 3, dtype=torch.float64)
    # r = 0, dimension j = 0: a = 1, b = 0 -> psi(0) = 1; j = 1: b = 1 -> psi(-1) = 0.
    assert table[0, 0].item() == 1.0 and table[0, 1].item() == 0.0
    # r = 2, j = 16 (a = 2, b = 0): psi(1) = 0; j = 17 (a = 2, b = 1): psi(0.5).
    assert table[2, 16].item() == pytest.approx(0.0, abs=1e-16)
    assert table[2, 17].item() == pytest.approx(0.75 * math.exp(-0.125), abs=1e-15)
    assert table.abs().max() <= 1.0  # no 1/sqrt(a) factor: values stay in [-1, 1]


def test_cast_is_rounded_from_float64_and_cached():
    config = WavePosConfig()
    exact = wavelet_table(config, 64, 100, dtype=torch.float64)
    half = wavelet_table(config, 64, 100, dtype=torch.bfloat16)
    assert torch.equal(half, exact.to(torch.bfloat16))
    assert wavelet_table(config, 64, 100, dtype=torch.bfloat16) is half
    assert wavelet_table(config, 64, 101, dtype=torch.bfloat16) is not half


def test_table_made_in_inference_mode_is_usable_for_autograd():
    config = WavePosConfig(num_scales=2)
    with torch.inference_mode():
        table = wavelet_table(config, 8, 33)
    q = torch.randn(33, 8, requires_grad=True)
    (q * table).sum().backward()  # would raise for an inference tensor
    assert not table.is_inference()


@pytest.mark.parametrize("wavelet", sorted(CLOSED_FORMS))
@pytest.mark.parametrize("sign", ["m-n", "n-m"])
@pytest.mark.filterwarnings("ignore:wavelet='haar' is the Haar reflected")  # both conventions, on purpose
def test_cutoff_rule(wavelet, sign):
    config = WavePosConfig(wavelet=wavelet, num_scales=4, sign_convention=sign)
    support = wavelet_support(config, 16)
    table = wavelet_table(config, 16, support + 500, dtype=torch.float64)
    assert table[support:].abs().max() < CUTOFF  # everything past the support may be skipped
    assert table[: support].abs().max() >= CUTOFF
    # The bound is tight to within one distance unit per scale unit of the largest scale.
    assert table[max(0, support - 9) : support].abs().max() >= CUTOFF * 1e-3 or wavelet == "haar"


def test_support_of_presets():
    assert wavelet_support(WavePosConfig(), 128) == math.floor(15 + get_wavelet("ricker").radius * 128) + 1
    assert 5.5 < get_wavelet("ricker").radius < 6.5


def test_user_registered_wavelet():
    name = "triangle_test"
    register_wavelet(name, lambda t, c: (1 - t.abs()).clamp(min=0), radius=1.0, description="tent", overwrite=True)
    assert name in registered_wavelets()
    config = WavePosConfig(wavelet=name, num_scales=1)
    table = wavelet_table(config, 2, 4, dtype=torch.float64)
    assert table[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert table[:, 1].tolist() == [0.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="already registered"):
        register_wavelet(name, lambda t, c: t, radius=None)


def test_bad_table_arguments():
    with pytest.raises(ValueError, match="length"):
        wavelet_table(WavePosConfig(), 64, -1)
    with pytest.raises(ValueError, match="does not divide head_dim=60"):
        wavelet_table(WavePosConfig(), 60, 10)


def test_log_n_scale():
    positions = torch.tensor([0, 511, 512, 1023, 4095])
    scale = log_n_scale(positions, 512)
    assert scale[:2].tolist() == [1.0, 1.0]
    assert scale[2].item() == pytest.approx(math.log(513) / math.log(512))
    assert scale[4].item() == pytest.approx(math.log(4096) / math.log(512))


@pytest.mark.parametrize("sign", ["m-n", "n-m"])
def test_table_support_is_the_one_skipping_rule(sign):
    """column_supports / table_support: the rows a backend may skip, bounded by wavelet_support."""
    config = WavePosConfig(num_scales=4, sign_convention=sign)
    table = wavelet_table(config, 32, 200, dtype=torch.float64)
    per_column = column_supports(table)
    assert per_column.shape == (32,) and per_column.dtype == torch.int64
    for j, r in enumerate(per_column.tolist()):
        assert r < 200 and table[r:, j].abs().max() < CUTOFF  # 'n-m' puts some peaks in the future: r = 0
        assert r == 0 or table[r - 1, j].abs() >= CUTOFF
    assert table_support(table) == per_column.max() <= wavelet_support(config, 32)
    assert table[table_support(table):].abs().max() < CUTOFF
    exact = column_supports(table, skip_cutoff(torch.float64))  # float64: only exact zeros skip
    assert skip_cutoff(torch.float64) == 0.0 and skip_cutoff(torch.bfloat16) == CUTOFF
    assert (exact >= per_column).all() and table_support(torch.zeros(10, 4)) == 0
    assert column_supports(table[:0]).tolist() == [0] * 32
