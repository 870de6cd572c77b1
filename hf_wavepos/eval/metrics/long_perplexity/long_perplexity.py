"""Long-context perplexity of an already loaded causal LM as an `evaluate` metric (hf_wavepos)."""

import datasets
import evaluate

from hf_wavepos.eval.perplexity import perplexity_by_length

_DESCRIPTION = """Perplexity against context length for a model object you already hold (the stock
`perplexity` metric takes a model id and has no stride). For each length L, "full" mode scores the
first L tokens of every text with at least L tokens in one forward pass; "sliding" mode moves an
L-token window over each whole text by `stride` tokens, scoring each token once. Perplexity is
exp of the token-weighted mean negative log-likelihood. Texts shorter than L are skipped at that
length with a warning, never padded."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of texts to score (the stock metric's name for its input texts).
    model: a loaded Hugging Face causal LM (on its device and dtype).
    tokenizer: its tokenizer.
    lengths: context lengths in tokens (default [512]).
    mode: "full" (default) or "sliding".
    stride: sliding mode: tokens the window moves (1 <= stride <= min(lengths)).
    batch_size: windows per forward pass (default 1).
    max_tokens: cut every text to this many tokens first.
Returns:
    lengths, perplexities, mean_nll, num_documents, num_tokens, skipped_documents: lists, one
    entry per length (ascending).
Examples:
    >>> ppl = evaluate.load(metric_path("long_perplexity"))
    >>> ppl.compute(predictions=texts, model=model, tokenizer=tokenizer, lengths=[512, 1024])
"""

_CITATION = """@inproceedings{oka2025wavelet,
  title = {Wavelet-based Positional Representation for Long Context},
  author = {Oka, Yui and Hasegawa, Taku and Nishida, Kyosuke and Saito, Kuniko},
  booktitle = {ICLR}, year = {2025}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LongPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model=None, tokenizer=None, lengths=(512,), mode="full", stride=None,
                 batch_size=1, max_tokens=None):
        if model is None or tokenizer is None:
            raise ValueError("long_perplexity needs model= (a loaded causal LM) and tokenizer= in compute()")
        rows = perplexity_by_length(model, predictions, lengths, tokenizer=tokenizer, mode=mode, stride=stride,
                                    batch_size=batch_size, max_tokens=max_tokens, show_progress=False)
        return {
            "lengths": [r.length for r in rows],
            "perplexities": [r.perplexity for r in rows],
            "mean_nll": [r.mean_nll for r in rows],
            "num_documents": [r.num_documents for r in rows],
            "num_tokens": [r.num_tokens for r in rows],
            "skipped_documents": [r.skipped_documents for r in rows],
        }
