"""Mother wavelets and the positional table p[r] (Oka et al., ICLR 2025, Eq. 11-14).

For a head of size d, the table holds one fixed d-vector per relative distance r = m - n >= 0:

    p[r][j] = psi( (x - b_j) / a_j ),    x = r (sign 'm-n', default) or x = -r (sign 'n-m')

with the (a_j, b_j) pairs of `WavePosConfig.scales_and_shifts` (Eq. 13) and no 1/sqrt(a)
factor (the paper drops it). The table is shared by all heads and layers and defined for every
r: there is no clipping and no maximum length.

Wavelets live in a registry so users can add their own (`register_wavelet`). Each carries a
``radius``: |psi(t)| < 1e-6 for every |t| > radius. `wavelet_support` turns it into the
distance R past which every entry of the table is below 1e-6, the only place a backend may
skip work (METHOD.md, Sec. 1).

This module is the one home of that rule: `CUTOFF`, `skip_cutoff` (per compute dtype) and the
support of a given table (`column_supports`, `table_support`), which the attention backends call.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from hf_wavepos.config import WavePosConfig

CUTOFF = 1e-6
"""Magnitude below which a table entry may be treated as zero by a backend (METHOD.md, Sec. 1)."""

WaveletFn = Callable[[torch.Tensor, "WavePosConfig"], torch.Tensor]


@dataclass(frozen=True)
class Wavelet:
    """A registered mother wavelet: ``fn(t, config)`` maps float64 t to psi(t) elementwise."""

    name: str
    fn: WaveletFn
    radius: float | None
    description: str


_REGISTRY: dict[str, Wavelet] = {}


def register_wavelet(
    name: str,
    fn: WaveletFn,
    *,
    radius: float | None,
    description: str = "",
    overwrite: bool = False,
) -> None:
    """Add a mother wavelet usable as ``WavePosConfig(wavelet=name)``.

    Args:
        name: registry key.
        fn: ``fn(t, config) -> psi(t)``; t is a float64 tensor of any shape, the result has
            the same shape. It must be elementwise and finite.
        radius: |psi(t)| < 1e-6 for all |t| > radius, or None when there is no such bound
            (then no backend skips any distance).
        description: one line shown by ``wavepos basis``.
        overwrite: allow replacing an existing entry.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"wavelet name must be a non-empty string, got {name!r}.")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"wavelet {name!r} is already registered; pass overwrite=True to replace it.")
    if radius is not None and not (radius >= 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be a finite number >= 0 or None, got {radius!r}.")
    _REGISTRY[name] = Wavelet(name, fn, radius, description)
    _table_float64.cache_clear()
    _table_cast.cache_clear()


def registered_wavelets() -> tuple[str, ...]:
    """Names of all registered wavelets, in registration order."""
    return tuple(_REGISTRY)


def get_wavelet(name: str) -> Wavelet:
    """The registry entry for ``name``; ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"wavelet={name!r} is not registered; allowed values: {', '.join(_REGISTRY)}."
        ) from None


# ---------------------------------------------------------------------------- built-ins
def ricker(t: torch.Tensor, config: "WavePosConfig") -> torch.Tensor:
    """Unnormalised Ricker (Mexican hat), Eq. 12: psi(t) = (1 - t^2) exp(-t^2 / 2)."""
    t2 = t * t
    return (1.0 - t2) * torch.exp(-0.5 * t2)


def gaussian(t: torch.Tensor, config: "WavePosConfig") -> torch.Tensor:
    """Gaussian bump, paper Sec. 6.3: psi(t) = exp(-t^2)."""
    return torch.exp(-t * t)


def haar_causal(t: torch.Tensor, config: "WavePosConfig") -> torch.Tensor:
    """Haar reflected to the causal side: 1 on [-0.5, 0), -1 on [-1, -0.5), 0 elsewhere."""
    ones = torch.ones_like(t)
    return torch.where(
        (t >= -0.5) & (t < 0), ones, torch.where((t >= -1) & (t < -0.5), -ones, 0 * ones)
    )


def morlet(t: torch.Tensor, config: "WavePosConfig") -> torch.Tensor:
    """Real Morlet: psi(t) = exp(-t^2) cos(w t), w = ``config.morlet_omega``."""
    return torch.exp(-t * t) * torch.cos(config.morlet_omega * t)


def _ricker_radius() -> float:
    # |psi| = (t^2 - 1) exp(-t^2/2) decreases for t > sqrt(3); bisect where it crosses 1e-6.
    lo, hi = math.sqrt(3.0), 20.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if (mid * mid - 1) * math.exp(-0.5 * mid * mid) >= CUTOFF:
            lo = mid
        else:
            hi = mid
    return hi


# ---------------------------------------------------------------------------- the table
def scales_and_shifts_tensors(config: "WavePosConfig", head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), each float64 of shape (head_dim,): scale and shift of every dimension (Eq. 13)."""
    pairs = config.scales_and_shifts(head_dim)
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    b = torch.tensor([float(p[1]) for p in pairs], dtype=torch.float64)
    return a, b


def wavelet_values(config: "WavePosConfig", head_dim: int, distances: torch.Tensor) -> torch.Tensor:
    """p[r] for arbitrary distances r (float64 tensor of shape (N,)) -> (N, head_dim) float64.

    Implements Eq. 11/14: p[r][j] = psi((x - b_j) / a_j), x = r ('m-n') or -r ('n-m').
    """
    a, b = scales_and_shifts_tensors(config, head_dim)
    x = distances.to(torch.float64)
    if config.sign_convention == "n-m":
        x = -x
    t = (x[:, None] - b[None, :]) / a[None, :]
    return get_wavelet(config.wavelet).fn(t, config)


@functools.lru_cache(maxsize=64)
def _table_float64(config: "WavePosConfig", head_dim: int, length: int) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        r = torch.arange(length, dtype=torch.float64)
        return wavelet_values(config, head_dim, r)


@functools.lru_cache(maxsize=128)
def _table_cast(
    config: "WavePosConfig", head_dim: int, length: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return _table_float64(config, head_dim, length).to(device=device, dtype=dtype).contiguous()


def wavelet_table(
    config: "WavePosConfig",
    head_dim: int,
    length: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The positional table p[r] for r = 0 .. length-1 (Eq. 11-14).

    Args:
        config: the representation (`WavePosConfig`; presets via `WavePosConfig.from_preset`).
        head_dim: d, the attention head size; must match the config's scales x shifts.
        length: number of distances, >= 0 (any value: the table has no maximum length).
        device, dtype: of the result (default CPU, float32). Values are computed in float64
            and then cast, so every dtype holds the correctly rounded value.

    Returns:
        Tensor of shape (length, head_dim); row r is p[r], dimension order scale-major
        (see `hf_wavepos.config`). The tensor is cached per (config, head_dim, length,
        device, dtype) and shared: treat it as read-only.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be an integer >= 0, got {length!r}.")
    config.check_head_dim(head_dim)
    device = torch.device(device if device is not None else "cpu")
    dtype = dtype or torch.float32
    if device.type == "meta":
        return torch.empty(length, head_dim, device=device, dtype=dtype)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _table_cast(config, head_dim, length, device, dtype)


def wavelet_support(config: "WavePosConfig", head_dim: int) -> int | None:
    """Smallest R such that |p[r][j]| < 1e-6 for every r >= R and every j, or None.

    Derived from the wavelet's registered radius: for sign 'm-n', t = (r - b)/a exceeds the
    radius once r > b + radius * a; for 'n-m', |t| = (r + b)/a does once r > radius * a - b.
    None means the wavelet has no radius, so no distance may be skipped.
    """
    radius = get_wavelet(config.wavelet).radius
    if radius is None:
        return None
    support = 0
    for a, b in config.scales_and_shifts(head_dim):
        edge = b + radius * a if config.sign_convention == "m-n" else radius * a - b
        support = max(support, math.floor(edge) + 1)
    return support



def skip_cutoff(dtype: torch.dtype) -> float:
    """The cutoff a backend computing in ``dtype`` applies: `CUTOFF`, or 0.0 in float64.

    float64 is the exact path (the reference, the tests): there only exact zeros are skipped.
    """
    return 0.0 if dtype == torch.float64 else CUTOFF


def column_supports(table: torch.Tensor, cutoff: float = CUTOFF) -> torch.Tensor:
    """Per column j of ``table`` (R, D): one more than the last row r with |p[r][j]| >= cutoff.

    Exact zeros never count (so cutoff 0 skips only them); a column with no such row has support
    0. Rows r >= support[j] may be skipped for column j. Tensor ops on the table's device, no
    host synchronisation (kernels use it per chunk of columns).

    Returns:
        int64 tensor of shape (D,) on the table's device.
    """
    R, D = table.shape
    if R == 0:
        return torch.zeros(D, dtype=torch.int64, device=table.device)
    significant = (table.abs() >= cutoff) & (table != 0)  # (R, D)
    rank = torch.arange(1, R + 1, device=table.device)  # the support if row r is the last one
    return torch.where(significant, rank[:, None], 0).amax(dim=0)


def table_support(table: torch.Tensor, cutoff: float = CUTOFF) -> int:
    """One more than the last row of ``table`` (R, D) with some |p[r][j]| >= cutoff (0 if none).

    Rows past it may be skipped entirely. For a table of `wavelet_table` it is at most
    `wavelet_support` (the bound the wavelet's radius gives). Reads one number to the host.
    """
    return int(column_supports(table, cutoff).max()) if table.shape[1] else 0


def log_n_scale(positions: torch.Tensor, train_length: int) -> torch.Tensor:
    """Log-n query scaling: max(1, ln(m + 1) / ln(train_length)) for each position m.

    Args:
        positions: integer tensor of any shape, the absolute position m of each query.
        train_length: L_train, the context length the model was trained at (>= 2).

    Returns:
        float32 tensor of ``positions``' shape; multiply q_m by it before attention
        (METHOD.md, Sec. 4: 1 inside the training length, growing slowly past it).
    """
    if train_length < 2:
        raise ValueError(f"train_length must be >= 2 for log-n scaling, got {train_length!r}.")
    m = positions.to(torch.float64)
    scale = torch.log1p(m) / math.log(train_length)
    return scale.clamp(min=1.0).to(torch.float32)

# ---------------------------------------------------------------------------- registry contents
_GAUSS_RADIUS = math.sqrt(math.log(1.0 / CUTOFF))

register_wavelet("ricker", ricker, radius=_ricker_radius(), description="(1 - t^2) exp(-t^2/2), Eq. 12 (default)")
register_wavelet("gaussian", gaussian, radius=_GAUSS_RADIUS, description="exp(-t^2)")
register_wavelet("haar", haar_causal, radius=1.0, description="Haar reflected to the causal side")
register_wavelet("morlet", morlet, radius=_GAUSS_RADIUS, description="exp(-t^2) cos(w t), w = morlet_omega")
