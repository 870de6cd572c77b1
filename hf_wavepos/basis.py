"""The positional table p[r] (Oka et al., ICLR 2025, Eq. 11-14) and its support.

For a head of size d, the table holds one fixed d-vector per relative distance r = m - n >= 0:

    p[r][j] = psi( (x - b_j) / a_j ),    x = r (sign 'm-n', default) or x = -r (sign 'n-m')

with the (a_j, b_j) pairs of `WavePosConfig.scales_and_shifts` (Eq. 13), psi a registered mother
wavelet (`hf_wavepos.wavelets`) and no 1/sqrt(a) factor (the paper drops it). The table is
shared by all heads and layers and defined for every r: there is no clipping and no maximum
length. `wavelet_support` gives the distance R past which every entry is below the 1e-6
cut-off (`hf_wavepos.wavelets.CUTOFF`), the only place a backend may skip work
(docs/METHOD.md, Sec. 1).
"""

from __future__ import annotations

import functools
import math

import torch

from hf_wavepos.config import WavePosConfig
from hf_wavepos.wavelets import CUTOFF, Wavelet, get_wavelet


# ---------------------------------------------------------------------------- the table
def scales_and_shifts_tensors(config: WavePosConfig, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), each float64 of shape (head_dim,): scale and shift of every dimension (Eq. 13)."""
    pairs = config.scales_and_shifts(head_dim)
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    b = torch.tensor([float(p[1]) for p in pairs], dtype=torch.float64)
    return a, b


def wavelet_values(config: WavePosConfig, head_dim: int, distances: torch.Tensor) -> torch.Tensor:
    """p[r] for arbitrary distances r (float64 tensor of shape (N,)) -> (N, head_dim) float64.

    Implements Eq. 11/14: p[r][j] = psi((x - b_j) / a_j), x = r ('m-n') or -r ('n-m').
    """
    a, b = scales_and_shifts_tensors(config, head_dim)
    x = distances.to(torch.float64)
    if config.sign_convention == "n-m":
        x = -x
    t = (x[:, None] - b[None, :]) / a[None, :]
    return get_wavelet(config.wavelet).fn(t, config)


# The caches are keyed by the registry entry too, so re-registering a wavelet name (overwrite=True)
# can never serve a table of the old function.
@functools.lru_cache(maxsize=64)
def _table_float64(config: WavePosConfig, head_dim: int, length: int, wavelet: Wavelet) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        r = torch.arange(length, dtype=torch.float64)
        return wavelet_values(config, head_dim, r)


@functools.lru_cache(maxsize=128)
def _table_cast(
    config: WavePosConfig, head_dim: int, length: int, wavelet: Wavelet, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return _table_float64(config, head_dim, length, wavelet).to(device=device, dtype=dtype).contiguous()


def wavelet_table(
    config: WavePosConfig,
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
    return _table_cast(config, head_dim, length, get_wavelet(config.wavelet), device, dtype)


def wavelet_support(config: WavePosConfig, head_dim: int) -> int | None:
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
        (docs/METHOD.md, Sec. 1: 1 inside the training length, growing slowly past it).
    """
    if train_length < 2:
        raise ValueError(f"train_length must be >= 2 for log-n scaling, got {train_length!r}.")
    m = positions.to(torch.float64)
    scale = torch.log1p(m) / math.log(train_length)
    return scale.clamp(min=1.0).to(torch.float32)
