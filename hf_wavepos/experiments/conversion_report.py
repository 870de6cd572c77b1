"""Results of `hf_wavepos.experiments.conversion`: recovery curves, tables, plots and the README.

The benchmark module trains and scores; this one turns its rows into ``recovery.csv`` /
``recovery.png``, ``perplexity.*``, ``passkey.*`` and the README table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def record_scores(row: dict[str, Any], score: dict[str, Any], texts: dict[str, list[str]]) -> None:
    """Copy one method's scores (perplexity by length, extension, passkey by length) into its row."""
    row["perplexity"] = {str(r["length"]): r["perplexity"] for r in score["perplexity"]["result"]}
    if "extension" in score:
        row["extension_perplexity"] = score["extension"]["result"][0]["perplexity"]
        row["extension_seconds_per_document"] = score["extension"]["seconds"] / len(texts["extension"])
    if "extension_passkey" in score:
        accuracy = score["extension_passkey"]["result"]["accuracy"]
        row["extension_passkey"] = sum(r[0] for r in accuracy) / len(accuracy)
    passkey = score["passkey"]["result"]
    row["passkey"] = {str(n): sum(r[j] for r in passkey["accuracy"]) / len(passkey["depths"])
                      for j, n in enumerate(passkey["lengths"])}


def write_results(config: Any, methods: dict[str, dict[str, Any]], scores: dict[str, dict[str, Any]],
                  texts: dict[str, list[str]], descriptions: dict[str, str], out: Path) -> tuple[float, dict]:
    """Write recovery, perplexity, extension and passkey files for every method.

    Returns:
        (the control's final perplexity, the extension results by method).
    """
    from hf_wavepos.eval.plots import plot_accuracy_by_length
    from hf_wavepos.eval.report import write_csv, write_perplexity, write_retrieval

    target = methods[config.control]["final_perplexity"]
    recovery_rows = []
    for method, row in methods.items():
        if row.get("recovery"):
            row["vs_control"] = row["final_perplexity"] / target
            for margin in (0.25, 0.1):
                row[f"tokens_to_{1 + margin:g}x"] = tokens_to_within(row["recovery"], target, margin)
            recovery_rows += [{"method": method, **r} for r in row["recovery"]]
    write_csv(recovery_rows, out / "recovery.csv")
    plot_recovery({m: r["recovery"] for m, r in methods.items() if r.get("recovery")}, target, out / "recovery.png",
                  f"recovery at {config.block_size} tokens ({config.global_batch_size} blocks per step)")
    protocol = {"mode": "full", "stride": None, "num_texts": len(texts["main"]), "max_tokens": None}
    write_perplexity({"task": "perplexity", "protocol": {**protocol, "lengths": config.lengths,
                                                         "source": f"stdlib held-out ({descriptions['main']})"},
                      "results": {m: s["perplexity"]["result"] for m, s in scores.items()}}, out,
                     train_length=config.block_size)
    extension = {m: s["extension"]["result"] for m, s in scores.items() if "extension" in s}
    if extension:
        write_perplexity({"task": "perplexity", "protocol": {**protocol, "num_texts": len(texts["extension"]),
                                                             "lengths": [config.extension_length],
                                                             "source": descriptions["extension"]},
                          "results": extension}, out / "extension", train_length=config.block_size)
    write_retrieval({m: s["passkey"]["result"] for m, s in scores.items()}, out, "passkey")
    plot_accuracy_by_length({m: {int(n): a for n, a in methods[m]["passkey"].items()} for m in config.methods},
                            config.block_size, out / "passkey_by_length.png",
                            f"passkey accuracy ({config.passkey_samples} x {len(config.passkey_depths)} depths per length)")
    return target, extension


def recovery_curve(run_dir: str | Path, tokens_per_step: int) -> list[dict[str, float]]:
    """Held-out loss against recalibration step of a finished training run (its ``metrics.jsonl``).

    Returns:
        Rows ``{"step", "tokens", "val_loss", "perplexity"}`` in step order (step 0: before training).
    """
    rows = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val_loss" in record:
            rows[record["step"]] = record["val_loss"]
    return [{"step": s, "tokens": s * tokens_per_step, "val_loss": v, "perplexity": math.exp(v)}
            for s, v in sorted(rows.items())]


def tokens_to_within(curve: list[dict[str, float]], target: float, margin: float) -> int | None:
    """Training tokens after which held-out perplexity is first <= (1 + margin) x ``target`` (None: never)."""
    return next((row["tokens"] for row in curve if row["perplexity"] <= (1 + margin) * target), None)


def plot_recovery(curves: dict[str, list[dict]], control_ppl: float, path: Path, title: str) -> Path:
    """Held-out perplexity (log y) against training tokens, one line per trained method; the
    control's final perplexity and 1.1x / 1.25x of it as horizontal lines."""
    from hf_wavepos.eval.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for method, rows in curves.items():
        ax.plot([r["tokens"] for r in rows], [r["perplexity"] for r in rows], marker="o", markersize=3, label=method)
    for factor, style in ((1.0, "-"), (1.1, "--"), (1.25, ":")):
        ax.axhline(factor * control_ppl, color="grey", linestyle=style, linewidth=1,
                   label=f"{factor:g} x control ({factor * control_ppl:.2f})")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda y, _: f"{y:g}")  # 20, 50, 100 rather than 2 x 10^1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if f"{y:e}"[0] in "25" else ""))
    ax.set_xlabel("recalibration tokens")
    ax.set_ylabel("held-out perplexity at the recalibration length (log)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="x-small", ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(summary: dict[str, Any]) -> str:
    """The results table of ``conversion.json`` as Markdown (one row per method)."""
    settings = summary["settings"]
    lengths = summary["lengths"]
    passkey = summary.get("passkey_lengths", [])
    ext = settings.get("extension_length")
    header = ["method", "trained tokens", "train min", "held-out ppl: start -> end", "vs control",
              "tokens to 1.25x", "tokens to 1.1x", *(f"ppl {n}" for n in lengths),
              *((f"ppl {ext}",) if ext else ()), *(f"passkey {n}" for n in passkey),
              *((f"passkey {ext}",) if ext and settings.get("extension_passkey") else ())]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in summary["methods"].items():
        curve = row.get("recovery") or []
        start_end = f"{curve[0]['perplexity']:.2f} -> {curve[-1]['perplexity']:.2f}" if curve else "-"
        cells = [f"`{method}`", _fmt(row.get("trained_tokens")), _fmt(row.get("train_minutes"), 1), start_end,
                 _fmt(row.get("vs_control")) + ("x" if row.get("vs_control") else ""),
                 _fmt(row.get("tokens_to_1.25x")), _fmt(row.get("tokens_to_1.1x")),
                 *(_fmt(row.get("perplexity", {}).get(str(n))) for n in lengths)]
        if ext:
            cells.append(_fmt(row.get("extension_perplexity")))
        cells += [_fmt(row.get("passkey", {}).get(str(n)), 2) for n in passkey]
        if ext and settings.get("extension_passkey"):
            cells.append(_fmt(row.get("extension_passkey")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(summary: dict[str, Any], out: Path, command: str | None = None) -> Path:
    """``out/README.md``: what ran, on which device, and the table."""
    s = summary["settings"]
    control = summary["methods"][s["control"]]
    text = [
        f"# Conversion benchmark: {summary['source_model']}",
        "",
        f"Device: {summary['device']}. Recalibration at {s['block_size']} tokens: {s['steps']} steps x "
        f"{s['global_batch_size']} blocks = {s['steps'] * s['global_batch_size'] * s['block_size']:,} tokens per "
        f"trained method, lr {s['lr']:g} (LoRA {s['lora_lr']:g}), seed {s['seed']}, the same standard-library files "
        f"for every method"
        + (f"; the transfer recipes first spend {s['transfer_steps']} steps ("
           f"{s['transfer_steps'] * s['global_batch_size'] * s['block_size']:,} tokens, lr {s['transfer_lr']:g}) on "
           "attention transfer (`transfer-distill` then distils for the steps above)"
           if any(m.split(":")[1].startswith("transfer") for m in summary["methods"]) else "")
        + f". Control: `{s['control']}` (held-out perplexity {control['final_perplexity']:.2f}).",
        "",
        f"Command: `{command or summary.get('command', 'wavepos bench conversion')}`",
        "",
        "Columns: held-out perplexity at the recalibration length before and after training (the recovery "
        "curve is recovery.png); its ratio to the control; the training tokens after which it first came "
        "within 25% / 10% of the control (- : not within the budget); full-sequence perplexity by length on "
        f"{summary['perplexity_documents']} held-out files"
        + (f" and at {s['extension_length']} tokens ({summary.get('extension_documents_description')})"
           if s.get("extension_length") else "")
        + f"; passkey accuracy by prompt length ({s['passkey_samples']} samples x {len(s['passkey_depths'])} depths).",
        "",
        markdown_table(summary),
        "",
        f"Training time of the trained methods: {sum(r.get('train_minutes', 0) for r in summary['methods'].values()):.0f} "
        f"min; wall time of the last sitting: {summary['seconds'] / 60:.0f} min (trainings and scores of earlier "
        "sittings are reused, not repeated).",
    ]
    path = out / "README.md"
    path.write_text("\n".join(text) + "\n")
    return path
