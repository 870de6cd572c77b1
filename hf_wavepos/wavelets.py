"""Mother wavelets psi and their registry (Oka et al., ICLR 2025, Eq. 12 and Sec. 6.3).

A leaf module (torch only): `hf_wavepos.config` checks wavelet names against the registry and
`hf_wavepos.basis` evaluates the registered functions into the table p[r].

Each wavelet carries a ``radius``: |psi(t)| < `CUTOFF` (1e-6) for every |t| > radius. This is the
project's one definition of the cut-off: `hf_wavepos.basis.wavelet_support` turns the radius into
the distance past which every table entry is below it, the only place a backend may skip work
(docs/METHOD.md, Sec. 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

CUTOFF = 1e-6
"""Magnitude below which a table entry may be treated as zero by a backend."""

WaveletFn = Callable[[torch.Tensor, Any], torch.Tensor]
"""``fn(t, config)``: t a float64 tensor, config the `hf_wavepos.config.WavePosConfig` (for parameters
such as ``morlet_omega``); returns psi(t), same shape."""


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
def ricker(t: torch.Tensor, config: Any) -> torch.Tensor:
    """Unnormalised Ricker (Mexican hat), Eq. 12: psi(t) = (1 - t^2) exp(-t^2 / 2)."""
    t2 = t * t
    return (1.0 - t2) * torch.exp(-0.5 * t2)


def gaussian(t: torch.Tensor, config: Any) -> torch.Tensor:
    """Gaussian bump, paper Sec. 6.3: psi(t) = exp(-t^2)."""
    return torch.exp(-t * t)


def haar_causal(t: torch.Tensor, config: Any) -> torch.Tensor:
    """Haar reflected to the causal side: 1 on [-0.5, 0), -1 on [-1, -0.5), 0 elsewhere."""
    ones = torch.ones_like(t)
    return torch.where(
        (t >= -0.5) & (t < 0), ones, torch.where((t >= -1) & (t < -0.5), -ones, 0 * ones)
    )


def morlet(t: torch.Tensor, config: Any) -> torch.Tensor:
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


# ---------------------------------------------------------------------------- the built-in wavelets
_GAUSS_RADIUS = math.sqrt(math.log(1.0 / CUTOFF))

register_wavelet("ricker", ricker, radius=_ricker_radius(), description="(1 - t^2) exp(-t^2/2), Eq. 12 (default)")
register_wavelet("gaussian", gaussian, radius=_GAUSS_RADIUS, description="exp(-t^2)")
register_wavelet("haar", haar_causal, radius=1.0, description="Haar reflected to the causal side")
register_wavelet("morlet", morlet, radius=_GAUSS_RADIUS, description="exp(-t^2) cos(w t), w = morlet_omega")
