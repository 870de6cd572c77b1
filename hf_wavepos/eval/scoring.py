"""Answer scoring: SQuAD-style normalisation, QA F1 / exact match, ROUGE, passkey digits.

These are the single definitions behind the `evaluate` metric modules (``metrics/``), the
long-document runner and the retrieval tasks. Every function is deterministic and needs no model.

- QA F1 / exact match follow the official SQuAD v1.1 evaluation script (Rajpurkar et al., 2016),
  which LongBench also uses for its F1 tasks: lower-case, drop punctuation, drop the articles
  a / an / the, collapse whitespace; F1 is over the bag of remaining whitespace tokens; with
  several references the best one counts.
- ROUGE uses Google's ``rouge-score`` package; with several references the best one counts
  (``RougeScorer.score_multi``) and the corpus value is the plain mean of the per-example
  F-measures (``evaluate``'s bootstrap "mid" agrees with it on its documented examples).
"""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_DIGIT_RUN = re.compile(r"\d+")

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def qa_f1(prediction: str, reference: str) -> float:
    """Token-level F1 between the normalised prediction and reference (0.0 .. 1.0)."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    common = collections.Counter(pred) & collections.Counter(ref)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred)
    recall = overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def _as_reference_lists(references: Sequence[str | Sequence[str]], n: int) -> list[list[str]]:
    if len(references) != n:
        raise ValueError(f"references has {len(references)} entries but predictions has {n}; give one per prediction")
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs:
            raise ValueError(f"references[{i}] is empty; give at least one reference answer")
        out.append(refs)
    return out


def qa_scores(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> dict[str, float]:
    """Corpus exact match and F1 on the SQuAD scale 0..100 (best reference per example).

    Args:
        predictions: one answer string per example.
        references: per example, one reference string or a list of acceptable answers.

    Returns:
        ``{"exact_match": ..., "f1": ...}``, means over examples times 100.
    """
    refs = _as_reference_lists(references, len(predictions))
    if not predictions:
        raise ValueError("predictions is empty; give at least one example to score")
    em = [max(exact_match(p, r) for r in rs) for p, rs in zip(predictions, refs)]
    f1 = [max(qa_f1(p, r) for r in rs) for p, rs in zip(predictions, refs)]
    return {"exact_match": 100.0 * sum(em) / len(em), "f1": 100.0 * sum(f1) / len(f1)}


def rouge_per_example(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    rouge_types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = False,
) -> dict[str, list[float]]:
    """ROUGE F-measure per example (best reference), for each type in ``rouge_types``.

    Args:
        predictions: generated texts.
        references: per example, one reference or a list of references.
        rouge_types: any of rouge1, rouge2, ..., rougeL, rougeLsum (rougeLsum splits on newlines).
        use_stemmer: apply the Porter stemmer (rouge-score's option).
    """
    from rouge_score import rouge_scorer

    refs = _as_reference_lists(references, len(predictions))
    types = [t.replace("rouge_", "rouge") for t in rouge_types]  # accept evaluate's 'rouge_1' spelling
    for t in types:
        if not re.fullmatch(r"rouge([1-9]|L|Lsum)", t):
            raise ValueError(f"rouge_types contains {t!r}; use rouge1..rouge9, rougeL or rougeLsum")
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
    out: dict[str, list[float]] = {t: [] for t in types}
    for pred, rs in zip(predictions, refs):
        scores = scorer.score_multi(rs, pred)
        for t in types:
            out[t].append(scores[t].fmeasure)
    return out


def rouge_scores(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    rouge_types: Sequence[str] = ROUGE_TYPES,
    use_stemmer: bool = False,
) -> dict[str, float]:
    """Corpus ROUGE (0..1): the mean over examples of `rouge_per_example`."""
    if not predictions:
        raise ValueError("predictions is empty; give at least one example to score")
    per = rouge_per_example(predictions, references, rouge_types, use_stemmer)
    return {t: sum(v) / len(v) for t, v in per.items()}


def first_number(text: str) -> str | None:
    """The first run of ASCII digits in ``text`` (None when there is none)."""
    match = _DIGIT_RUN.search(text)
    return match.group(0) if match else None


def numbers_in(text: str) -> list[str]:
    """Every run of ASCII digits in ``text``, in order."""
    return _DIGIT_RUN.findall(text)


def retrieval_exact(output: str, value: str) -> bool:
    """Exact-match retrieval score: the first number the model produced is exactly ``value``.

    ``"12345."`` scores for 12345; ``"1234"``, ``"123456"`` and ``"9 12345"`` do not.
    """
    return first_number(output) == value


def mean(values) -> float:
    """Arithmetic mean of numbers (booleans count as 0 / 1); NaN for no values."""
    values = [float(v) for v in values]
    return sum(values) / len(values) if values else float("nan")
