"""Long-document QA and summarisation in the LongBench / SCROLLS record shape.

Records are dicts with a document, an optional question and reference answers:

- LongBench: ``context``, ``input`` (the question or instruction), ``answers`` (list of strings);
- SCROLLS: ``input`` (question and document together), ``output`` (one reference string);
- also accepted: ``question`` for ``input`` and ``answer`` / ``output`` for ``answers``.

Each record is put into its task's prompt template, the prompt is cut in the middle to the
model's window (LongBench's rule: keep the first and last halves of the token ids, leaving room
for the answer), the model answers greedily, and the answer is scored: token F1 with SQuAD
normalisation for QA tasks, ROUGE-L F-measure for summarisation (both 0..100, as LongBench reports).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tqdm.auto import tqdm

from hf_wavepos.eval.generation import greedy_generate
from hf_wavepos.eval.scoring import exact_match, qa_f1, rouge_per_example


@dataclass(frozen=True)
class TaskTemplate:
    """How to prompt and score one task."""

    prompt: str  # a str.format template with {context} and {input}
    metric: str  # "qa_f1" or "rouge_l"
    max_new_tokens: int
    first_line: bool = False  # keep only the first line of the answer before scoring


_QA = (
    "Read the document below and answer the question as briefly as possible.\n\n"
    "Document:\n{context}\n\nQuestion: {input}\nAnswer:"
)
_SUMMARY = "Summarise the document below in a few sentences.\n\nDocument:\n{context}\n\nSummary:"

TEMPLATES: dict[str, TaskTemplate] = {
    # built-in offline sets
    "debian_faq_qa": TaskTemplate(
        "Below is a chapter of the Debian GNU/Linux FAQ. Answer the question in one sentence.\n\n"
        "{context}\n\nQuestion: {input}\nAnswer:", "qa_f1", 48, first_line=True),
    "stdlib_summ": TaskTemplate(
        "Below is the source code of a Python standard library module without its docstring. "
        "Write the module's docstring: a few sentences on what the module provides.\n\n"
        "{context}\n\nDocstring:", "rouge_l", 128),
    # LongBench English tasks (THUDM/LongBench configs)
    "narrativeqa": TaskTemplate(_QA, "qa_f1", 128, first_line=True),
    "qasper": TaskTemplate(
        "Answer the question about the scientific article below as concisely as you can, with a phrase or a "
        "sentence. Write \"unanswerable\" if the article does not answer it, and \"yes\", \"no\" for yes/no "
        "questions.\n\nArticle: {context}\n\nQuestion: {input}\nAnswer:", "qa_f1", 128, first_line=True),
    "multifieldqa_en": TaskTemplate(_QA, "qa_f1", 64, first_line=True),
    "hotpotqa": TaskTemplate(
        "Answer the question using the passages below; give only the answer.\n\n{context}\n\n"
        "Question: {input}\nAnswer:", "qa_f1", 32, first_line=True),
    "2wikimqa": TaskTemplate(
        "Answer the question using the passages below; give only the answer.\n\n{context}\n\n"
        "Question: {input}\nAnswer:", "qa_f1", 32, first_line=True),
    "musique": TaskTemplate(
        "Answer the question using the passages below; give only the answer.\n\n{context}\n\n"
        "Question: {input}\nAnswer:", "qa_f1", 32, first_line=True),
    "gov_report": TaskTemplate(
        "Below is a government report. Write a one-page summary of it.\n\nReport:\n{context}\n\nSummary:",
        "rouge_l", 512),
    "qmsum": TaskTemplate(
        "Below is a meeting transcript and a query. Answer the query in one or more sentences.\n\n"
        "Transcript:\n{context}\n\nQuery: {input}\nAnswer:", "rouge_l", 512),
    "multi_news": TaskTemplate(
        "Below are several news articles. Write a one-page summary of all of them.\n\n{context}\n\nSummary:",
        "rouge_l", 512),
    # SCROLLS (tau/scrolls): the document is inside "input"
    "scrolls_qa": TaskTemplate("{input}\n\nAnswer:", "qa_f1", 64, first_line=True),
    "scrolls_summ": TaskTemplate("{input}\n\nSummary:", "rouge_l", 512),
    # generic fall-backs
    "qa": TaskTemplate(_QA, "qa_f1", 64, first_line=True),
    "summarization": TaskTemplate(_SUMMARY, "rouge_l", 256),
}
METRICS = ("qa_f1", "rouge_l")


def normalize_record(record: dict, index: int = 0) -> dict:
    """A record in LongBench or SCROLLS shape as ``{"id", "context", "input", "answers"}``.

    Raises:
        ValueError: the record has neither ``context`` nor ``input``, or no reference answer.
    """
    context = record.get("context")
    question = record.get("input", record.get("question"))
    if context is None and question is None:
        raise ValueError(f"record {index} has neither 'context' nor 'input'; LongBench records need 'context', SCROLLS records 'input'")
    answers = record.get("answers", record.get("answer", record.get("output")))
    if isinstance(answers, str):
        answers = [answers]
    if isinstance(answers, dict):  # SQuAD-style {"text": [...]}
        answers = answers.get("text")
    if not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"record {index} has no reference answer; give 'answers' (list of strings) or 'output' (string)")
    return {
        "id": str(record.get("_id", record.get("id", index))),
        "context": context or "",
        "input": question or "",
        "answers": list(answers),
    }


def load_longdoc_records(
    source: str,
    *,
    config_name: str | None = None,
    split: str = "test",
    limit: int | None = None,
) -> list[dict]:
    """Load records for `run_longdoc`.

    Args:
        source: a built-in offline set (``"debian_faq_qa"``, ``"stdlib_summ"``), a local
            ``.jsonl`` file, or a Hub dataset name (e.g. ``"THUDM/LongBench"`` with
            ``config_name="qasper"``, or ``"tau/scrolls"`` with ``config_name="qasper"``).
        config_name: the Hub dataset's configuration (LongBench / SCROLLS: the task).
        split: the Hub dataset's split.
        limit: keep the first ``limit`` records.

    Raises:
        ValueError: the source cannot be read or gives no record.
    """
    from hf_wavepos.eval.datasets_offline import BUILTIN_SETS, builtin_records
    from hf_wavepos.eval.texts import load_hub_dataset, looks_like_path, read_jsonl

    if source in BUILTIN_SETS:
        raw = builtin_records(source)
    elif looks_like_path(source):
        try:
            raw = read_jsonl(source)
        except FileNotFoundError as err:
            raise ValueError(f"records file {source!r} does not exist; give a JSON-lines file or one of {BUILTIN_SETS}") from err
    else:
        raw = list(load_hub_dataset(source, config_name, split))
    if limit is not None:
        raw = raw[:limit]
    if not raw:
        raise ValueError(f"source {source!r} gave no record; check the file, config_name and split")
    return [normalize_record(r, i) for i, r in enumerate(raw)]


def truncate_middle(ids: Sequence[int], max_tokens: int) -> list[int]:
    """LongBench's truncation: keep the first ``max_tokens // 2`` and the last ``max_tokens -
    max_tokens // 2`` ids when there are more than ``max_tokens``."""
    if max_tokens < 2:
        raise ValueError(f"max_tokens={max_tokens} must be >= 2")
    if len(ids) <= max_tokens:
        return list(ids)
    head = max_tokens // 2
    return list(ids[:head]) + list(ids[len(ids) - (max_tokens - head) :])


def model_window(model) -> int | None:
    """The model's context window from its config (``max_position_embeddings`` / ``n_positions``)."""
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def score_answer(metric: str, prediction: str, answers: Sequence[str]) -> float:
    """One prediction's score, 0..100: best QA F1 or best ROUGE-L F over the references."""
    if metric == "qa_f1":
        return 100.0 * max(qa_f1(prediction, a) for a in answers)
    if metric == "rouge_l":
        return 100.0 * rouge_per_example([prediction], [list(answers)], ["rougeL"])["rougeL"][0]
    raise ValueError(f"metric={metric!r} is not one of {METRICS}")


def run_longdoc(
    model,
    tokenizer,
    records: Sequence[dict],
    task: str,
    *,
    max_length: int | None = None,
    max_new_tokens: int | None = None,
    template: TaskTemplate | None = None,
    show_progress: bool = True,
    label: str = "model",
) -> dict:
    """Prompt, truncate, generate greedily and score every record of one task.

    Args:
        model, tokenizer: a Hugging Face causal LM and its tokenizer.
        records: records from `load_longdoc_records` (or raw LongBench / SCROLLS dicts).
        task: a key of `TEMPLATES` (chooses prompt, metric, answer length), unless ``template``.
        max_length: the model's window in tokens (prompt + answer); default: from its config.
        max_new_tokens: override the task's answer length.
        template: a custom `TaskTemplate`.

    Returns:
        ``{"task", "metric", "score" (0..100), "exact_match" (QA only), "num_records",
        "num_truncated", "max_length", "predictions": [rows]}``.
    """
    if template is None:
        if task not in TEMPLATES:
            raise ValueError(f"task={task!r} has no template; choose one of {sorted(TEMPLATES)} or pass template=")
        template = TEMPLATES[task]
    if template.metric not in METRICS:
        raise ValueError(f"template.metric={template.metric!r} is not one of {METRICS}")
    if not records:
        raise ValueError("records is empty; load some with load_longdoc_records")
    new_tokens = max_new_tokens or template.max_new_tokens
    max_length = max_length or model_window(model)
    if max_length is None:
        raise ValueError("the model's config gives no window; pass max_length (prompt + answer tokens)")
    if max_length <= new_tokens + 1:
        raise ValueError(f"max_length={max_length} leaves no room for a prompt after max_new_tokens={new_tokens}")
    rows, truncated = [], 0
    for i, raw in enumerate(tqdm(records, desc=f"longdoc {task} {label}", unit="doc", disable=not show_progress)):
        record = raw if set(raw) >= {"id", "context", "input", "answers"} else normalize_record(raw, i)
        prompt = template.prompt.format(context=record["context"], input=record["input"])
        ids = list(tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"])
        kept = truncate_middle(ids, max_length - new_tokens)
        truncated += len(kept) < len(ids)
        output = greedy_generate(model, tokenizer, kept, new_tokens)
        prediction = output.strip().split("\n")[0].strip() if template.first_line else output.strip()
        row = {
            "id": record["id"], "prompt_tokens": len(ids), "kept_tokens": len(kept), "prediction": prediction,
            "answers": record["answers"], "score": score_answer(template.metric, prediction, record["answers"]),
        }
        if template.metric == "qa_f1":
            row["exact_match"] = 100.0 * max(exact_match(prediction, a) for a in record["answers"])
        rows.append(row)
    result = {
        "task": task, "metric": template.metric, "score": sum(r["score"] for r in rows) / len(rows),
        "num_records": len(rows), "num_truncated": truncated, "max_length": max_length,
        "max_new_tokens": new_tokens,
    }
    if template.metric == "qa_f1":
        result["exact_match"] = sum(r["exact_match"] for r in rows) / len(rows)
    result["predictions"] = rows
    return result
