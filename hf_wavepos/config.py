"""`WavePosConfig`: everything that defines the wavelet positional representation.

The config is what a checkpoint stores in the ``wavepos`` section of its ``config.json``
(`WavePosConfig.to_dict` / `WavePosConfig.from_dict`). It holds no tensor and imports no
transformers; `hf_wavepos.basis.wavelet_table` turns it into the table p[r].

Scales and shifts follow Eq. 13 of Oka et al. (ICLR 2025): with ``num_scales`` = s and
``shifts_per_scale`` = d/s, dimension ``j = i * shifts_per_scale + k`` of the head uses

    a_j = 2 ** (scale_base_exponent + i),   b_j = k          (i < s, k < d/s)

so the table is scale-major: the first d/s dimensions carry the smallest scale.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from hf_wavepos.wavelets import registered_wavelets

FORMAT_VERSION = 1

SIGN_CONVENTIONS = ("m-n", "n-m")
POSITION_METHODS = ("wavelet", "alibi", "nope")


@dataclass(frozen=True)
class WavePosConfig:
    """Validated description of a wavelet positional representation (docs/METHOD.md, Eq. 10-14).

    Invalid values raise ``ValueError`` naming the field and the allowed values. The head
    dimension is not part of the config (one config serves any model); check a config against
    a model with `WavePosConfig.check_head_dim`.
    """

    method: str = field(
        default="wavelet",
        metadata={
            "help": "Position method: 'wavelet' (this paper), or the peers 'alibi' (standard slopes) and "
            "'nope' (no positional term) for fair comparisons. RoPE is the stock model."
        },
    )
    wavelet: str = field(
        default="ricker",
        metadata={"help": "Mother wavelet psi, a name in hf_wavepos.wavelets.registered_wavelets()."},
    )
    num_scales: int = field(
        default=8,
        metadata={"help": "Number of scales s; scales are 2**scale_base_exponent ... (Eq. 13)."},
    )
    scale_base_exponent: int = field(
        default=0,
        metadata={
            "help": "Exponent of the smallest scale: 0 gives 2^0.. (paper, L_train 512), "
            "2 gives 2^2.. (paper, L_train 4096)."
        },
    )
    shifts_per_scale: int | None = field(
        default=None,
        metadata={
            "help": "Shifts b = 0..shifts_per_scale-1 per scale; None means head_dim // num_scales "
            "(Eq. 13). num_scales * shifts_per_scale must equal the head dimension."
        },
    )
    sign_convention: str = field(
        default="m-n",
        metadata={
            "help": "Argument of the wavelet: 'm-n' uses t = (m - n - b) / a (paper text, default); "
            "'n-m' uses t = (n - m - b) / a (paper appendix)."
        },
    )
    morlet_omega: float = field(
        default=5.0,
        metadata={"help": "Angular frequency w of the Morlet wavelet exp(-t^2) cos(w t)."},
    )
    log_n_scaling: bool = field(
        default=False,
        metadata={
            "help": "Multiply q_m by max(1, ln(m + 1) / ln(train_length)) (needs train_length)."
        },
    )
    train_length: int | None = field(
        default=None,
        metadata={"help": "Training context length; required by log_n_scaling."},
    )
    format_version: int = field(
        default=FORMAT_VERSION,
        metadata={"help": "Version of this dict's layout in config.json."},
    )

    def __post_init__(self) -> None:
        if self.method not in POSITION_METHODS:
            hint = " (RoPE is the stock model: do not convert it)" if str(self.method).lower() == "rope" else ""
            raise ValueError(
                f"method={self.method!r} is not allowed; allowed values: {', '.join(POSITION_METHODS)}{hint}."
            )
        wavelets = registered_wavelets()
        if self.wavelet not in wavelets:
            raise ValueError(
                f"wavelet={self.wavelet!r} is not registered; allowed values: {', '.join(wavelets)} "
                "(or register one with hf_wavepos.register_wavelet)."
            )
        if not _is_int(self.num_scales) or self.num_scales <= 0:
            raise ValueError(f"num_scales must be a positive integer, got {self.num_scales!r}.")
        if not _is_int(self.scale_base_exponent) or not -16 <= self.scale_base_exponent <= 32:
            raise ValueError(
                "scale_base_exponent must be an integer in [-16, 32] (scales 2^e ...), "
                f"got {self.scale_base_exponent!r}."
            )
        if self.shifts_per_scale is not None and (
            not _is_int(self.shifts_per_scale) or self.shifts_per_scale <= 0
        ):
            raise ValueError(
                "shifts_per_scale must be a positive integer or None (= head_dim // num_scales), "
                f"got {self.shifts_per_scale!r}."
            )
        if self.sign_convention not in SIGN_CONVENTIONS:
            raise ValueError(
                f"sign_convention={self.sign_convention!r} is not allowed; allowed values: "
                f"{', '.join(repr(s) for s in SIGN_CONVENTIONS)}."
            )
        if self.wavelet == "haar" and self.sign_convention == "m-n" and self.method == "wavelet":
            warnings.warn(
                "wavelet='haar' is the Haar reflected to t < 0 (docs/METHOD.md, Sec. 1: the paper's appendix, which "
                "writes relative positions as 0, -1, -2, ...). With sign_convention='m-n' (t = (r - b) / a, r >= 0) "
                "it is non-zero only at distances r < b, at most shifts_per_scale - 1 tokens, so the model gets "
                "almost no position information; use sign_convention='n-m'.",
                UserWarning,
                stacklevel=3,
            )
        if not isinstance(self.morlet_omega, (int, float)) or not math.isfinite(self.morlet_omega):
            raise ValueError(f"morlet_omega must be a finite number, got {self.morlet_omega!r}.")
        if not isinstance(self.log_n_scaling, bool):
            raise ValueError(f"log_n_scaling must be true or false, got {self.log_n_scaling!r}.")
        if self.train_length is not None and (
            not _is_int(self.train_length) or self.train_length < 2
        ):
            raise ValueError(
                f"train_length must be an integer >= 2 or None, got {self.train_length!r}."
            )
        if self.log_n_scaling and self.train_length is None:
            raise ValueError(
                "log_n_scaling=True needs train_length (the context length the model was trained "
                "at); set train_length or turn log_n_scaling off."
            )
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format_version={self.format_version!r} is not supported by this hf_wavepos; "
                f"allowed values: {FORMAT_VERSION}. Upgrade hf_wavepos to read newer checkpoints."
            )

    # ------------------------------------------------------------------ geometry
    def resolved_shifts(self, head_dim: int) -> int:
        """Shifts per scale for a head of size ``head_dim`` (validates the pair)."""
        self.check_head_dim(head_dim)
        return self.shifts_per_scale or head_dim // self.num_scales

    def check_head_dim(self, head_dim: int) -> None:
        """Raise ValueError unless this config yields exactly ``head_dim`` (scale, shift) pairs.

        Only the wavelet method has a table tied to the head size; ALiBi and NoPE accept any.
        """
        if not _is_int(head_dim) or head_dim <= 0:
            raise ValueError(f"head_dim must be a positive integer, got {head_dim!r}.")
        if self.method != "wavelet":
            return
        if self.shifts_per_scale is None:
            if head_dim % self.num_scales:
                divisors = [s for s in range(1, head_dim + 1) if head_dim % s == 0]
                raise ValueError(
                    f"num_scales={self.num_scales} does not divide head_dim={head_dim}; "
                    f"set num_scales to one that divides it: {divisors} (e.g. num_scales="
                    f"{max(d for d in divisors if d <= self.num_scales)}), or give shifts_per_scale "
                    "so that num_scales * shifts_per_scale = head_dim."
                )
        elif self.num_scales * self.shifts_per_scale != head_dim:
            raise ValueError(
                f"num_scales * shifts_per_scale = {self.num_scales} * {self.shifts_per_scale} = "
                f"{self.num_scales * self.shifts_per_scale} must equal head_dim={head_dim}; "
                "set shifts_per_scale=None to derive it."
            )

    def scales_and_shifts(self, head_dim: int) -> list[tuple[float, int]]:
        """The (a_j, b_j) pair of every dimension j, scale-major (Eq. 13)."""
        shifts = self.resolved_shifts(head_dim)
        return [
            (2.0 ** (self.scale_base_exponent + i), k)
            for i in range(self.num_scales)
            for k in range(shifts)
        ]

    # ------------------------------------------------------------------ dict round trip
    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict for the ``wavepos`` section of config.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WavePosConfig":
        """Inverse of `to_dict`; unknown keys raise ValueError listing the known fields."""
        if isinstance(data, WavePosConfig):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(
                f"the wavepos section must be a mapping of fields, got {type(data).__name__}."
            )
        cls._check_field_names(data)
        return cls(**dict(data))

    @classmethod
    def _check_field_names(cls, data: Mapping[str, Any]) -> None:
        """Raise ValueError naming unknown keys of ``data`` and listing the known fields."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown wavepos field(s) {unknown}; known fields: {', '.join(sorted(known))} "
                "(and 'preset' for a dict that starts from a preset)."
            )

    def replace(self, **changes: Any) -> "WavePosConfig":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "WavePosConfig":
        """The named preset (see `PRESETS`), optionally with fields overridden.

        Raises:
            ValueError: an unknown preset (listing the presets), an unknown field (listing the
                known fields) or an invalid value.
        """
        if name not in PRESETS:
            raise ValueError(
                f"unknown wavepos preset {name!r}; allowed values: {', '.join(PRESETS)}."
            )
        cls._check_field_names(overrides)
        return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_config(config_or_preset: "WavePosConfig | str | Mapping[str, Any]") -> WavePosConfig:
    """The one resolver of every form a position config is given in; returns a `WavePosConfig`.

    Accepts a `WavePosConfig`, a preset name (``"long"``), a ``wavepos`` dict of fields
    (``{"method": "alibi"}``), or a dict with a ``preset`` key plus fields to override
    (``{"preset": "long", "num_scales": 8}``). `hf_wavepos.apply_wavepos`, ``wavepos convert
    --position``, recipes' ``model.position`` and model configs all go through it.

    Raises:
        ValueError: unknown preset or field (listing the allowed ones), a value of the wrong
            kind, or an invalid field value.
    """
    if isinstance(config_or_preset, WavePosConfig):
        return config_or_preset
    if isinstance(config_or_preset, str):
        return WavePosConfig.from_preset(config_or_preset)
    if isinstance(config_or_preset, Mapping) and "preset" in config_or_preset:
        fields = {k: v for k, v in config_or_preset.items() if k != "preset"}
        if not isinstance(config_or_preset["preset"], str):
            raise ValueError(f"preset must be a preset name ({', '.join(PRESETS)}), got {config_or_preset['preset']!r}.")
        return WavePosConfig.from_preset(config_or_preset["preset"], **fields)
    return WavePosConfig.from_dict(config_or_preset)


PRESETS: dict[str, WavePosConfig] = {
    # The paper's Eq. 13 rule: scales 2^0..2^(s-1), d/s shifts each (L_train 512 setting).
    "oka2025": WavePosConfig(),
    # The paper's long-context setting (L_train 4096): scales 2^2..2^9.
    "oka2025-4k": WavePosConfig(scale_base_exponent=2),
    # Best in the project's calibration (docs/METHOD.md, Sec. 4): 16 scales + log-n query scaling.
    # train_length defaults to the calibration's 512; override it for other training lengths.
    "long": WavePosConfig(num_scales=16, log_n_scaling=True, train_length=512),
    # Peers, for comparisons in the same machinery.
    "alibi": WavePosConfig(method="alibi"),
    "nope": WavePosConfig(method="nope"),
}
