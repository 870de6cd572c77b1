import json

import pytest

from hf_wavepos import PRESETS, WavePosConfig
from hf_wavepos.config import resolve_config


def test_presets_match_the_paper_and_calibration():
    assert PRESETS["oka2025"].scales_and_shifts(128)[:3] == [(1.0, 0), (1.0, 1), (1.0, 2)]
    pairs = PRESETS["oka2025"].scales_and_shifts(128)
    assert sorted({a for a, _ in pairs}) == [2.0**i for i in range(8)]
    assert sorted({b for _, b in pairs}) == list(range(16))
    assert min(a for a, _ in PRESETS["oka2025-4k"].scales_and_shifts(128)) == 4.0
    assert max(a for a, _ in PRESETS["oka2025-4k"].scales_and_shifts(128)) == 2.0**9
    long = PRESETS["long"]
    assert long.num_scales == 16 and long.log_n_scaling and long.train_length == 512
    assert max(a for a, _ in long.scales_and_shifts(64)) == 2.0**15
    assert long.resolved_shifts(64) == 4


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip_through_json(name):
    config = PRESETS[name]
    data = json.loads(json.dumps(config.to_dict()))
    assert WavePosConfig.from_dict(data) == config
    assert resolve_config(name) == config and resolve_config(data) == config


def test_overrides_and_explicit_shifts():
    config = WavePosConfig.from_preset("oka2025", wavelet="gaussian", shifts_per_scale=4, num_scales=16)
    assert config.resolved_shifts(64) == 4
    assert len(config.scales_and_shifts(64)) == 64


@pytest.mark.parametrize(
    "kwargs, field, allowed",
    [
        (dict(wavelet="mexican"), "wavelet", "ricker"),
        (dict(num_scales=0), "num_scales", "positive"),
        (dict(num_scales=-3), "num_scales", "positive"),
        (dict(num_scales=2.5), "num_scales", "positive"),
        (dict(sign_convention="+"), "sign_convention", "'m-n'"),
        (dict(log_n_scaling=True), "train_length", "log_n_scaling"),
        (dict(train_length=1), "train_length", ">= 2"),
        (dict(shifts_per_scale=0), "shifts_per_scale", "positive"),
        (dict(format_version=99), "format_version", "1"),
        (dict(scale_base_exponent=99), "scale_base_exponent", "[-16, 32]"),
    ],
)
def test_invalid_values_name_field_and_allowed_values(kwargs, field, allowed):
    with pytest.raises(ValueError) as err:
        WavePosConfig(**kwargs)
    assert field in str(err.value) and allowed in str(err.value)


def test_head_dim_must_be_divisible():
    with pytest.raises(ValueError, match=r"num_scales=16 does not divide head_dim=40.*\[1, 2, 4, 5, 8, 10, 20, 40\]"):
        PRESETS["long"].check_head_dim(40)
    with pytest.raises(ValueError, match=r"set num_scales to one that divides it.*num_scales=8"):
        PRESETS["long"].check_head_dim(8)
    with pytest.raises(ValueError, match="shifts_per_scale"):
        WavePosConfig(num_scales=8, shifts_per_scale=4).check_head_dim(64)


def test_unknown_preset_and_unknown_keys():
    with pytest.raises(ValueError, match="unknown wavepos preset 'longer'.*oka2025"):
        WavePosConfig.from_preset("longer")
    with pytest.raises(ValueError, match=r"unknown wavepos field\(s\) \['num_scale'\]"):
        WavePosConfig.from_dict({"num_scale": 8})
    with pytest.raises(ValueError, match="mapping"):
        WavePosConfig.from_dict(["ricker"])


def test_reflected_haar_needs_the_n_minus_m_convention():
    """The reflected Haar lives on t in [-1, 0): under t = (r - b) / a it only reaches distances r < b."""
    from hf_wavepos import wavelet_table

    with pytest.warns(UserWarning, match="use sign_convention='n-m'"):
        m_n = WavePosConfig.from_preset("oka2025", wavelet="haar")
    n_m = WavePosConfig.from_preset("oka2025", wavelet="haar", sign_convention="n-m")
    shifts = m_n.resolved_shifts(64)
    reach = lambda table: int(table.abs().sum(1).nonzero().max()) + 1  # noqa: E731 - last non-zero distance + 1
    assert reach(wavelet_table(m_n, 64, 512)) == shifts - 1  # nothing from shifts - 1 tokens back
    assert reach(wavelet_table(n_m, 64, 512)) == 129  # b = 0: distances 1 .. a, up to the largest scale 128


def test_one_resolver_for_every_dict_form():
    """A preset dict works wherever a position is given, and a misspelt field lists the known ones."""
    from hf_wavepos.convert import position_target

    assert resolve_config({"preset": "long", "num_scales": 8}) == PRESETS["long"].replace(num_scales=8)
    assert resolve_config({"preset": "alibi"}) == PRESETS["alibi"]
    with pytest.raises(ValueError, match=r"unknown wavepos field\(s\) \['scales'\]; known fields: .*num_scales"):
        resolve_config({"preset": "long", "scales": 8})
    with pytest.raises(ValueError, match=r"unknown wavepos field\(s\) \['scales'\]"):
        WavePosConfig.from_preset("long", scales=8)
    with pytest.raises(ValueError, match=r"unknown wavepos field\(s\) \['scales'\]; known fields"):
        position_target('{"preset": "long", "scales": 8}')
    with pytest.raises(ValueError, match="preset must be a preset name"):
        resolve_config({"preset": 3})
