"""The model card (README.md) of a wavepos checkpoint, with tables from an evaluation run.

`render_card` fills ``hf_wavepos/model_cards/wavepos.md.j2`` (Jinja2) with the position method,
the architecture and, given a run folder of ``wavepos eval``, its perplexity / retrieval /
long-document tables and plots; the YAML metadata carries a model-index that
`huggingface_hub.ModelCard` parses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from hf_wavepos.config import WavePosConfig
from hf_wavepos.models.registry import architecture_of
from hf_wavepos.models.remote import remote_module_name
from hf_wavepos.version import __version__

TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "wavepos.md.j2"
METHOD_TITLES = {
    "wavelet": "wavelet-based relative positions",
    "alibi": "ALiBi positions",
    "nope": "no positional encoding (NoPE)",
}


# ----------------------------------------------------------------------------- evaluation run
def read_eval_run(run_dir: str | Path) -> dict[str, Any]:
    """The manifest (``run.json``) of an evaluation run folder written by ``wavepos eval``."""
    manifest = Path(run_dir) / "run.json"
    if not manifest.is_file():
        raise ValueError(f"{run_dir} is not an evaluation run folder (no run.json); run `wavepos eval ... --out {run_dir}`.")
    run = json.loads(manifest.read_text())
    if not run.get("evaluations"):
        raise ValueError(f"{manifest} records no evaluation.")
    return run


def _labels(run: dict[str, Any]) -> list[str]:
    labels: list[str] = []
    for evaluation in run["evaluations"].values():
        labels += [label for label in evaluation["summary"] if label not in labels]
    return labels


def _fmt(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def eval_sections(run: dict[str, Any], label: str, run_dir: Path) -> dict[str, Any]:
    """Tables for the card from a run manifest: this model's column plus every other model's.

    Returns template variables (perplexity rows by length, retrieval rows, long-document rows,
    plot paths relative to the published folder) and ``eval_results`` for the model-index.
    """
    evaluations = run["evaluations"]
    context: dict[str, Any] = {"perplexity_rows": [], "retrieval_rows": [], "longdoc_rows": [],
                               "retrieval_plots": [], "perplexity_plot": None, "eval_results": []}
    ppl = evaluations.get("perplexity")
    if ppl:
        labels = [label] + [other for other in ppl["summary"] if other != label]
        lengths = sorted({int(n) for values in ppl["summary"].values() for n in values})
        context["perplexity_labels"] = [f"**{lab}** (this model)" if lab == label else lab for lab in labels]
        context["perplexity_rows"] = [
            (n, [_fmt(ppl["summary"].get(lab, {}).get(str(n))) for lab in labels]) for n in lengths
        ]
        protocol = ppl.get("protocol", {})
        context["perplexity_protocol"] = (
            f"Mode: {protocol.get('mode', 'full')}; {protocol.get('num_texts', '?')} documents from "
            f"{protocol.get('source', 'the evaluation set')}. Lower is better."
        )
        if "perplexity.png" in ppl.get("files", []):
            context["perplexity_plot"] = "eval/perplexity.png"
        for n, value in ppl["summary"].get(label, {}).items():
            context["eval_results"].append(dict(
                task_type="text-generation", task_name="Long-context language modeling",
                dataset_type=str(protocol.get("source", "custom")), dataset_name=str(protocol.get("source", "custom")),
                metric_type="perplexity", metric_value=float(value), metric_name=f"Perplexity @ {n} tokens",
            ))
    lengths: list[int] = []
    for name, evaluation in evaluations.items():
        if name == "passkey" or name.startswith("needle"):
            mine = evaluation["summary"].get(label)
            if not mine:
                continue
            lengths = sorted({*lengths, *(int(n) for n in mine["by_length"])})
            context["retrieval_rows"].append((name, mine["mean"], mine["by_length"]))
            context["retrieval_plots"] += [f"eval/{f}" for f in evaluation["files"]
                                           if f.endswith(".png") and _slug_in(label, f)]
            context["eval_results"].append(dict(
                task_type="text-generation", task_name=name, dataset_type="synthetic", dataset_name=name,
                metric_type="accuracy", metric_value=float(mine["mean"]), metric_name=f"{name} mean accuracy",
            ))
        elif name.startswith("longdoc_") and label in evaluation["summary"]:
            row = evaluation["summary"][label]
            context["longdoc_rows"].append((name[len("longdoc_"):], row["metric"], _fmt(row["score"], 3)))
    context["retrieval_lengths"] = lengths
    context["retrieval_rows"] = [
        (task, _fmt(mean), [_fmt(by_length.get(str(n))) for n in lengths])
        for task, mean, by_length in context["retrieval_rows"]
    ]
    return context


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table ('' when there are no rows)."""
    if not rows:
        return ""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def _slug_in(label: str, filename: str) -> bool:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") in filename


def check_eval_label(eval_run: str | Path | None, label: str | None) -> None:
    """Check that ``eval_run`` is an evaluation run folder and ``label`` one of its models (or None
    when the run holds a single model), before anything is written.

    Raises:
        ValueError: not a run folder, or a missing / unknown label (listing the run's labels).
    """
    if label is not None and eval_run is None:
        raise ValueError(f"label {label!r} names a model of an evaluation run: give the run too (eval_run=, --eval-run).")
    _eval_context(eval_run, label)


def _eval_context(eval_run: str | Path | None, label: str | None) -> dict[str, Any]:
    """`eval_sections` of ``label`` in the run (empty tables without a run); ValueError on a bad label."""
    if eval_run is None:
        return {"perplexity_rows": [], "retrieval_rows": [], "longdoc_rows": [], "eval_results": []}
    run = read_eval_run(eval_run)
    labels = _labels(run)
    if label is None:
        if len(labels) != 1:
            raise ValueError(f"the run in {eval_run} has several models {labels}; choose one with label=... (--label).")
        label = labels[0]
    if label not in labels:
        raise ValueError(f"label {label!r} is not in the run {eval_run}; its models: {labels}.")
    return eval_sections(run, label, Path(eval_run))


def _method_rows(wp: WavePosConfig, head_dim: int) -> list[tuple[str, Any]]:
    """The card's parameter table of the position method (only the fields that apply)."""
    shown: dict[str, Any] = {"method": wp.method}
    if wp.method == "wavelet":
        shown.update({k: v for k, v in wp.to_dict().items() if k not in ("method", "format_version")})
        shown["shifts_per_scale"] = wp.resolved_shifts(head_dim)
        shown["scales"] = ", ".join(f"2^{wp.scale_base_exponent + i}" for i in range(wp.num_scales))
        if wp.wavelet != "morlet":
            shown.pop("morlet_omega")
    elif wp.log_n_scaling:
        shown.update(log_n_scaling=True, train_length=wp.train_length)
    return [(f"`{k}`", v) for k, v in shown.items()]


# ----------------------------------------------------------------------------- the card
def render_card(
    config: dict[str, Any],
    *,
    name: str,
    repo_id: str,
    eval_run: str | Path | None = None,
    label: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    license: str = "apache-2.0",
    recipe: str | None = None,
    extra_limitations: str = "",
) -> str:
    """The model card (README.md) of a wavepos checkpoint.

    Args:
        config: the checkpoint's config.json as a dict (needs the ``wavepos`` section).
        name: the model's display name; repo_id: the Hub id used in the loading examples.
        eval_run: an evaluation run folder (``wavepos eval --out``) whose numbers the card shows.
        label: this model's label in that run (default: the only label, or an error listing them).
        base_model: the Hub id the checkpoint was converted from, if any.
        datasets: Hub dataset ids used for training (metadata).
        license: SPDX-like license id for the metadata.
        recipe: free text (or YAML in a code block) describing training.
        extra_limitations: more bullet points for the Limitations section.

    Returns:
        Markdown with YAML metadata that `huggingface_hub.ModelCard` parses, incl. a model-index.
    """
    import jinja2
    from huggingface_hub import EvalResult, ModelCardData

    wp = WavePosConfig.from_dict(config["wavepos"])
    arch = architecture_of(config["model_type"])
    model_config = arch.config_class.from_dict(config)  # attribute_map: num_attention_heads is GPT-2's n_head
    num_heads, head_dim = model_config.num_attention_heads, arch.head_dim(model_config)
    context = _eval_context(eval_run, label)
    card_data = ModelCardData(
        model_name=name,
        license=license,
        base_model=base_model,
        datasets=list(datasets) or None,
        tags=["wavepos", "long-context", "positional-encoding", f"{wp.method}-positions", arch.stock_model_type],
        pipeline_tag="text-generation",
        library_name="transformers",
        eval_results=[EvalResult(**r) for r in context["eval_results"]] or None,
    )
    method_rows = _method_rows(wp, head_dim)
    method_rows.append(("architecture", f"`{config['model_type']}` ({arch.causal_lm_class.__name__}), "
                        f"{model_config.num_hidden_layers} layers, {num_heads} heads of size {head_dim}"))
    lengths = context.get("retrieval_lengths", [])
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = environment.from_string(TEMPLATE.read_text())
    return template.render(
        metadata_yaml=card_data.to_yaml(),
        name=name,
        repo_id=repo_id,
        base_model=base_model,
        architecture=arch.causal_lm_class.__name__,
        model_type=config["model_type"],
        method=wp.method,
        method_title=METHOD_TITLES[wp.method],
        wavepos=wp,
        shifts=wp.resolved_shifts(head_dim) if wp.method == "wavelet" else 0,
        method_table=markdown_table(["parameter", "value"], method_rows),
        recipe=recipe,
        version=__version__,
        remote_file=f"{remote_module_name(config['model_type'])}.py",
        extra_limitations=extra_limitations,
        perplexity_protocol=context.get("perplexity_protocol", ""),
        perplexity_table=markdown_table(["tokens", *context.get("perplexity_labels", [])],
                                        [(n, *values) for n, values in context["perplexity_rows"]]),
        perplexity_plot=context.get("perplexity_plot"),
        retrieval_table=markdown_table(["task", "mean", *lengths],
                                       [(task, mean, *values) for task, mean, values in context["retrieval_rows"]]),
        retrieval_plots=context.get("retrieval_plots", []),
        longdoc_table=markdown_table(["task", "metric", "score"], context["longdoc_rows"]),
    )
