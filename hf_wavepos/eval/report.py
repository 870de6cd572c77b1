"""The run folder: every evaluation writes JSON + CSV (+ PNG) there and records itself in ``run.json``.

Layout (``wavepos eval ... --out RUN``)::

    RUN/run.json                  manifest: {"hf_wavepos_version", "evaluations": {name: {"files", "summary", ...}}}
    RUN/perplexity.{json,csv,png}
    RUN/passkey.{json,csv}  RUN/passkey_<model>.png
    RUN/needle_<variant>.{json,csv}  RUN/needle_<variant>_<model>.png
    RUN/longdoc_<task>.{json,csv}  RUN/longdoc_<task>_predictions.jsonl

The model-card tooling reads ``run.json`` and follows its file names; ``summary`` holds the
headline numbers per model.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from typing import Sequence

from hf_wavepos.eval.plots import plot_heatmap, plot_perplexity
from hf_wavepos.eval.texts import write_jsonl

MANIFEST = "run.json"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def write_json(data, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    """Write dict rows as CSV (columns: the union of keys, first-seen order; lists as JSON)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return path


def record_evaluation(run_dir: str | Path, name: str, files: Sequence[Path], summary: dict, **extra) -> Path:
    """Add or replace one evaluation's entry in ``run_dir/run.json`` and return the manifest path."""
    from hf_wavepos.version import __version__

    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"evaluations": {}}
    manifest["hf_wavepos_version"] = __version__
    manifest["evaluations"][name] = {
        "files": [Path(f).relative_to(run_dir).as_posix() for f in files],
        "summary": summary,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
    }
    return write_json(manifest, manifest_path)


def write_perplexity(report: dict, run_dir: str | Path, train_length: int | None = None) -> list[Path]:
    """Save a perplexity report as ``perplexity.json``, ``perplexity.csv`` (one row per model and
    length) and ``perplexity.png``; record it in the manifest."""
    run_dir = Path(run_dir)
    rows = [{"model": label, **row} for label, rows_ in report["results"].items() for row in rows_]
    files = [
        write_json(report, run_dir / "perplexity.json"),
        write_csv(rows, run_dir / "perplexity.csv"),
        plot_perplexity(report, run_dir / "perplexity.png", train_length),
    ]
    summary = {label: {str(r["length"]): r["perplexity"] for r in rows_} for label, rows_ in report["results"].items()}
    record_evaluation(run_dir, "perplexity", files, summary, protocol=report["protocol"])
    return files


def write_retrieval(results: dict[str, dict], run_dir: str | Path, name: str) -> list[Path]:
    """Save passkey or needle results of several models (label -> result) under ``name``
    (``passkey`` or ``needle_<variant>``): JSON, per-sample CSV and one heatmap PNG per model."""
    run_dir = Path(run_dir)
    files = [write_json(results, run_dir / f"{name}.json")]
    rows = [{"model": label, **row} for label, result in results.items() for row in result["samples"]]
    files.append(write_csv(rows, run_dir / f"{name}.csv"))
    summary = {}
    for label, result in results.items():
        grid = result["accuracy"] if result["task"] == "passkey" else result["score"]
        what = "passkey accuracy" if result["task"] == "passkey" else f"needle ({result['variant']}) exact-match score"
        files.append(plot_heatmap(grid, result["depths"], result["lengths"], run_dir / f"{name}_{_slug(label)}.png",
                                  f"{label}: {what}, {result['num_samples']} samples per cell", what))
        summary[label] = {
            "mean": result.get("mean_accuracy", result.get("mean_score")),
            "by_length": {str(n): sum(row[j] for row in grid) / len(grid) for j, n in enumerate(result["lengths"])},
        }
    record_evaluation(run_dir, name, files, summary)
    return files


def write_longdoc(results: dict[str, dict], run_dir: str | Path, task: str) -> list[Path]:
    """Save long-document results of several models (label -> result) for one task: JSON
    (without predictions), a CSV of per-model scores and a JSONL of every prediction."""
    run_dir = Path(run_dir)
    light = {label: {k: v for k, v in r.items() if k != "predictions"} for label, r in results.items()}
    files = [
        write_json(light, run_dir / f"longdoc_{task}.json"),
        write_csv([{"model": label, **r} for label, r in light.items()], run_dir / f"longdoc_{task}.csv"),
        write_jsonl(
            ({"model": label, **row} for label, r in results.items() for row in r["predictions"]),
            run_dir / f"longdoc_{task}_predictions.jsonl",
        ),
    ]
    summary = {label: {"metric": r["metric"], "score": r["score"], **({"exact_match": r["exact_match"]} if "exact_match" in r else {})}
               for label, r in light.items()}
    record_evaluation(run_dir, f"longdoc_{task}", files, summary)
    return files
