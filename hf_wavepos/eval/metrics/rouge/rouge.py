"""ROUGE via Google's rouge-score as an `evaluate` metric (hf_wavepos; works offline)."""

import datasets
import evaluate

from hf_wavepos.eval.scoring import ROUGE_TYPES, rouge_per_example

_DESCRIPTION = """ROUGE F-measures (Lin, 2004) computed with Google's rouge-score package. With several
references per prediction the best one counts; the aggregate is the mean over examples (0..1)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of references, each a string or a list of strings.
    rouge_types: subset of ["rouge1", "rouge2", "rougeL", "rougeLsum"] (default: all four).
    use_stemmer: apply the Porter stemmer (default False).
    use_aggregator: True (default) returns means; False returns per-example lists.
Returns:
    one entry per ROUGE type.
Examples:
    >>> rouge = evaluate.load(metric_path("rouge"))
    >>> rouge.compute(predictions=["hello goodbye", "ankh morpork"], references=["goodbye", "general kenobi"])["rouge1"]
    0.25
"""

_CITATION = """@inproceedings{lin-2004-rouge,
  title = {{ROUGE}: A Package for Automatic Evaluation of Summaries},
  author = {Lin, Chin-Yew}, booktitle = {Text Summarization Branches Out}, year = {2004}, pages = {74--81}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Rouge(evaluate.Metric):
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
            reference_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_stemmer=False, use_aggregator=True):
        per = rouge_per_example(predictions, references, rouge_types or ROUGE_TYPES, use_stemmer)
        if not use_aggregator:
            return per
        return {name: sum(values) / len(values) for name, values in per.items()}
