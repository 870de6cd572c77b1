"""Evaluation plots: perplexity and accuracy against length, retrieval heatmaps (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def pyplot():
    """matplotlib.pyplot on the Agg backend; ImportError naming the extra when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib: pip install 'hf-wavepos[eval]' (or pip install matplotlib)."
        ) from err
    return plt


def plot_perplexity(report: dict, path: str | Path, train_length: int | None = None) -> Path:
    """One curve per model: perplexity (log y) against context length (log2 x).

    Args:
        report: the output of `hf_wavepos.eval.perplexity.perplexity_report`.
        path: where to write the PNG.
        train_length: draw a vertical line at the training length, if given.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for label, rows in report["results"].items():
        ax.plot([r["length"] for r in rows], [r["perplexity"] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    lengths = sorted({r["length"] for rows in report["results"].values() for r in rows})
    ax.set_xticks(lengths, [str(n) for n in lengths])  # the measured lengths, as plain numbers
    ax.xaxis.set_minor_formatter(NullFormatter())
    plain = FuncFormatter(lambda y, _: f"{y:g}")  # 50, 60, 100 rather than 5 x 10^1
    ax.yaxis.set_major_formatter(plain)
    low, high = ax.get_ylim()
    if high / low < 10:  # within a decade: label every minor tick (60, 70, ...)
        ax.yaxis.set_minor_formatter(plain)
    else:  # wider: label 20, 50, 200, 500, ...
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if f"{y:e}"[0] in "25" else ""))
    if train_length:
        ax.axvline(train_length, color="grey", linestyle="--", linewidth=1, label=f"train length {train_length}")
    protocol = report["protocol"]
    mode = protocol["mode"] + (f", stride {protocol['stride']}" if protocol.get("stride") else "")
    ax.set_title(f"perplexity vs context length ({mode})")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity (log scale)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return _save(fig, plt, path)


def plot_heatmap(
    scores: Sequence[Sequence[float]],
    depths: Sequence[float],
    lengths: Sequence[int],
    path: str | Path,
    title: str,
    colorbar_label: str = "score",
) -> Path:
    """A depth x length heatmap (rows: depth, top = 0; columns: length), values in [0, 1], annotated.

    Args:
        scores: ``scores[i][j]`` for depth i and length j.
        depths, lengths: the row and column values.
        path: where to write the PNG.
        title: plot title.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.5 * len(depths)), constrained_layout=True)
    image = ax.imshow(scores, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    for i, row in enumerate(scores):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("depth")
    ax.set_title(title, fontsize="small")
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return _save(fig, plt, path)


def plot_accuracy_by_length(
    accuracy: dict[str, dict[int, float]], train_length: int, path: str | Path, title: str
) -> Path:
    """Accuracy (%) against prompt length (log2 x), one line per method, the training length marked.

    Args:
        accuracy: method -> {length: accuracy in [0, 1]}.
        train_length: drawn as a vertical line.
        path: where to write the PNG.
        title: plot title.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for method, by in accuracy.items():
        lengths = sorted(by)
        ax.plot(lengths, [100 * by[n] for n in lengths], marker="o", label=method)
    ax.axvline(train_length, color="grey", linestyle="--", linewidth=1, label=f"L_train {train_length}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("passkey accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
