"""`evaluate`-compatible metric modules shipped with hf_wavepos (loadable offline by path).

    import evaluate
    from hf_wavepos.eval.metrics import metric_path
    qa = evaluate.load(metric_path("qa_f1"))          # or load_metric("qa_f1")

- ``long_perplexity``: perplexity vs context length of an already loaded model (full-sequence or
  sliding-window), over texts at least as long as the longest length.
- ``qa_f1``: SQuAD-style exact match and token F1 (0..100), several references allowed.
- ``rouge``: ROUGE-1/2/L/Lsum F-measure (0..1) via rouge-score, several references allowed.

Each module is a thin wrapper over `hf_wavepos.eval.perplexity` / `hf_wavepos.eval.scoring`,
so the numbers are the same as the `wavepos eval` commands'.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).parent
METRIC_NAMES = ("long_perplexity", "qa_f1", "rouge")


def metric_path(name: str) -> str:
    """The folder of a shipped metric module, for ``evaluate.load(path)``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown metric {name!r}; choose one of {METRIC_NAMES}")
    return str(METRICS_DIR / name)


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of a shipped metric module (local files only, no network)."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)
