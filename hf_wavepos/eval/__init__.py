"""Evaluation suite: perplexity vs context length, passkey and needle retrieval, long-document
QA and summarisation, `evaluate` metric modules, plots and a run folder (see README, "Evaluate").

Works with any Hugging Face causal LM object, stock or wavepos. Heavy optional dependencies
(matplotlib, rouge-score, evaluate, datasets) are imported only where used.
"""

from hf_wavepos.eval.longdoc import TEMPLATES, load_longdoc_records, run_longdoc, truncate_middle
from hf_wavepos.eval.metrics import load_metric, metric_path
from hf_wavepos.eval.needle import run_needle
from hf_wavepos.eval.passkey import make_passkey_sample, run_passkey
from hf_wavepos.eval.perplexity import perplexity_by_length, perplexity_report
from hf_wavepos.eval.scoring import exact_match, normalize_answer, qa_f1, qa_scores, rouge_scores

__all__ = [
    "TEMPLATES",
    "exact_match",
    "load_longdoc_records",
    "load_metric",
    "make_passkey_sample",
    "metric_path",
    "normalize_answer",
    "perplexity_by_length",
    "perplexity_report",
    "qa_f1",
    "qa_scores",
    "rouge_scores",
    "run_longdoc",
    "run_needle",
    "run_passkey",
    "truncate_middle",
]
