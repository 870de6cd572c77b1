"""SQuAD-style QA exact match and F1 as an `evaluate` metric (hf_wavepos)."""

import datasets
import evaluate

from hf_wavepos.eval.scoring import qa_scores

_DESCRIPTION = """Exact match and token-level F1 between predicted and reference answers after
SQuAD v1.1 normalisation (lower case, no punctuation, no articles a/an/the, single spaces).
With several references per prediction the best one counts. Scores are means times 100."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted answer strings.
    references: list of reference answers, each a string or a list of acceptable strings.
Returns:
    exact_match: mean exact match, 0..100.
    f1: mean token F1, 0..100.
Examples:
    >>> qa = evaluate.load(metric_path("qa_f1"))
    >>> qa.compute(predictions=["the Denver Broncos"], references=[["Denver Broncos", "Broncos"]])
    {'exact_match': 100.0, 'f1': 100.0}
"""

_CITATION = """@inproceedings{rajpurkar-etal-2016-squad,
  title = {{SQuAD}: 100,000+ Questions for Machine Comprehension of Text},
  author = {Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle = {EMNLP}, year = {2016}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class QaF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                # single reference first: a string would also pass as a sequence of characters
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}),
            ],
        )

    def _compute(self, predictions, references):
        return qa_scores(predictions, references)
