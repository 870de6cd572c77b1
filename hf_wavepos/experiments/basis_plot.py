"""Plot of the wavelet basis p[r] (``wavepos basis --plot``; matplotlib through `hf_wavepos.eval.plots.pyplot`)."""

from __future__ import annotations

from pathlib import Path

import torch

from hf_wavepos.basis import wavelet_table
from hf_wavepos.config import WavePosConfig
from hf_wavepos.eval.plots import pyplot


def plot_basis(config: WavePosConfig, head_dim: int, length: int, path: str | Path) -> Path:
    """Save a two-panel PNG of p[r] (Eq. 11): a heatmap over (r, j) and one curve per scale.

    Args:
        config: the representation.
        head_dim: d, the head size.
        length: distances r = 0 .. length-1 to show.
        path: where to write the PNG.

    Returns:
        The path written.
    """
    plt = pyplot()
    table = wavelet_table(config, head_dim, length, dtype=torch.float64).numpy()
    shifts = config.resolved_shifts(head_dim)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 8), constrained_layout=True)
    image = top.imshow(table.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    top.set_xlabel("relative distance r = m - n")
    top.set_ylabel("dimension j (scale-major)")
    top.set_title(
        f"wavelet table p[r] ({config.wavelet}, {config.num_scales} scales x {shifts} shifts, "
        f"sign {config.sign_convention})"
    )
    fig.colorbar(image, ax=top, label="p[r][j]")
    for i in range(config.num_scales):
        j = i * shifts  # shift 0 of scale i
        bottom.plot(table[:, j], label=f"a = 2^{config.scale_base_exponent + i}")
    bottom.set_xscale("symlog", linthresh=8)
    bottom.set_xlabel("relative distance r (symlog)")
    bottom.set_ylabel("p[r][j], shift b = 0")
    bottom.legend(ncol=8, fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.15))
    bottom.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
