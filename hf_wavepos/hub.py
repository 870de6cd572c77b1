"""Hub-ready checkpoints: model card, self-contained folder, and upload.

`assemble_folder` writes exactly what would be uploaded::

    OUT/config.json                  with the ``wavepos`` section and ``auto_map``
    OUT/model.safetensors            weights (safetensors only: nothing is pickled or unpickled)
    OUT/modeling_wavepos_<arch>.py   remote code: standard library, torch and transformers only
    OUT/generation_config.json, tokenizer files
    OUT/README.md                    the model card (YAML metadata with a model-index, then text)
    OUT/eval/...                     plots and result JSON/CSV copied from an evaluation run folder

`push_folder` checks the folder, the token and the connection first, then uploads it in one
commit (``create_repo`` + ``upload_folder``), so a failure never leaves half a model online.
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from hf_wavepos import __version__
from hf_wavepos.config import WavePosConfig
from hf_wavepos.models.registry import architecture_of
from hf_wavepos.models.remote import remote_module_name

TEMPLATE = Path(__file__).parent / "model_cards" / "wavepos.md.j2"
FORBIDDEN_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".npy", ".joblib")
EVAL_SUFFIXES = (".json", ".csv", ".png", ".jsonl")
ALLOWED_REMOTE_IMPORTS = frozenset(sys.stdlib_module_names) | {"torch", "transformers"}
METHOD_TITLES = {
    "wavelet": "wavelet-based relative positions",
    "alibi": "ALiBi positions",
    "nope": "no positional encoding (NoPE)",
}


# ----------------------------------------------------------------------------- checks
def check_remote_code(path: str | Path) -> None:
    """Raise ValueError if the remote code imports anything but the stdlib, torch and transformers."""
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else ["." * node.level]
        else:
            continue
        for name in names:
            if name.split(".")[0] not in ALLOWED_REMOTE_IMPORTS:
                raise ValueError(f"{path}: remote code imports {name!r}; only the standard library, torch and "
                                 "transformers are allowed.")


def check_folder(folder: str | Path) -> dict[str, Any]:
    """Refuse a folder that is not a complete, pickle-free wavepos checkpoint; return its config.

    Raises:
        ValueError: naming what is missing (config.json, safetensors weights, remote code,
            README.md) or which file is a pickle-based format.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{folder} has no config.json: save the model there with save_pretrained.")
    config = json.loads(config_path.read_text())
    if "wavepos" not in config:
        raise ValueError(f"{config_path} has no 'wavepos' section: this is not a wavepos checkpoint "
                         "(convert the model with hf_wavepos.apply_wavepos and save it again).")
    if not list(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} has no .safetensors weights (model.safetensors or shards).")
    module = config.get("auto_map", {}).get("AutoModelForCausalLM", "").split(".")[0]
    if not module or not (folder / f"{module}.py").is_file():
        raise ValueError(f"{folder} has no remote code ({module or 'no auto_map'}): save it with hf_wavepos.")
    check_remote_code(folder / f"{module}.py")
    pickled = sorted(p.name for p in folder.rglob("*") if p.suffix in FORBIDDEN_SUFFIXES)
    if pickled:
        raise ValueError(f"{folder} holds pickle-based files {pickled}; only safetensors weights are published.")
    if not (folder / "README.md").is_file():
        raise ValueError(f"{folder} has no README.md model card: build the folder with `wavepos card`.")
    return config


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
    num_heads = config.get("num_attention_heads", config.get("n_head"))
    hidden = config.get("hidden_size", config.get("n_embd"))
    head_dim = config.get("head_dim") or hidden // num_heads
    context: dict[str, Any] = {"perplexity_rows": [], "retrieval_rows": [], "longdoc_rows": [], "eval_results": []}
    if eval_run is not None:
        run = read_eval_run(eval_run)
        labels = _labels(run)
        if label is None:
            if len(labels) != 1:
                raise ValueError(f"the run in {eval_run} has several models {labels}; choose one with label=...")
            label = labels[0]
        if label not in labels:
            raise ValueError(f"label {label!r} is not in the run {eval_run}; its models: {labels}.")
        context = eval_sections(run, label, Path(eval_run))
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
    shown: dict[str, Any] = {"method": wp.method}
    if wp.method == "wavelet":
        shown.update({k: v for k, v in wp.to_dict().items() if k not in ("method", "format_version")})
        shown["shifts_per_scale"] = wp.resolved_shifts(head_dim)
        shown["scales"] = ", ".join(f"2^{wp.scale_base_exponent + i}" for i in range(wp.num_scales))
        if wp.wavelet != "morlet":
            shown.pop("morlet_omega")
    elif wp.log_n_scaling:
        shown.update(log_n_scaling=True, train_length=wp.train_length)
    method_rows = [(f"`{k}`", v) for k, v in shown.items()]
    method_rows.append(("architecture", f"`{config['model_type']}` ({arch.causal_lm_class.__name__}), "
                        f"{config.get('num_hidden_layers', config.get('n_layer'))} layers, {num_heads} heads of size {head_dim}"))
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


# ----------------------------------------------------------------------------- the folder
def assemble_folder(
    model: Any,
    out_dir: str | Path,
    *,
    tokenizer: Any = None,
    eval_run: str | Path | None = None,
    label: str | None = None,
    repo_id: str | None = None,
    name: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    license: str = "apache-2.0",
    recipe: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the folder that `push_folder` would upload (see the module docstring).

    Args:
        model: a wavepos model, or the path of a saved one (loaded with the plugin).
        out_dir: the folder to write; must be empty or absent unless ``overwrite``.
        tokenizer: a tokenizer, or None to load one from ``model``'s folder (required there).
        eval_run, label: evaluation run folder and this model's label in it (for the card).
        repo_id: Hub id shown in the card's examples (default: ``name``).
        name: display name (default: the output folder's name).
        base_model, datasets, license, recipe: card metadata and text.
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        ``out_dir``, checked with `check_folder`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"{out_dir} exists and is not empty; choose another folder or pass overwrite=True.")
        shutil.rmtree(out_dir)
    source = None
    if isinstance(model, (str, Path)):
        source = Path(model)
        if not (source / "config.json").is_file():
            raise ValueError(f"{source} has no config.json; give the folder of a saved wavepos model.")
        if not list(source.glob("*.safetensors")):
            raise ValueError(f"{source} has no .safetensors weights; only safetensors checkpoints are published.")
        model = AutoModelForCausalLM.from_pretrained(source)
    if not str(getattr(model.config, "model_type", "")).startswith("wavepos_"):
        raise ValueError(f"{type(model).__name__} is not a wavepos model; convert it with hf_wavepos.apply_wavepos.")
    if tokenizer is None:
        if source is None:
            raise ValueError("pass tokenizer=... (the model object carries none).")
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise ValueError(f"no tokenizer could be loaded from {source} ({err}); pass tokenizer=...") from err
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if eval_run is not None:
        run = read_eval_run(eval_run)
        for evaluation in run["evaluations"].values():
            for file in evaluation["files"]:
                if Path(file).suffix in EVAL_SUFFIXES:
                    target = out_dir / "eval" / file
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(Path(eval_run) / file, target)
        shutil.copyfile(Path(eval_run) / "run.json", out_dir / "eval" / "run.json")
    config = json.loads((out_dir / "config.json").read_text())
    name = name or out_dir.name
    card = render_card(config, name=name, repo_id=repo_id or name, eval_run=eval_run, label=label,
                       base_model=base_model, datasets=datasets, license=license, recipe=recipe)
    (out_dir / "README.md").write_text(card)
    check_folder(out_dir)
    return out_dir


# ----------------------------------------------------------------------------- upload
def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload an assembled folder to the Hub in one commit; return the commit URL.

    Checks first, so that nothing is half uploaded: the folder (`check_folder`), a token
    (argument, HF_TOKEN or the saved login), and that the Hub answers with that token.

    Args:
        folder: from `assemble_folder` (or ``wavepos card``).
        repo_id: ``user/name`` on the Hub; created if missing.
        private: create the repository private.
        revision: a branch to upload to (created from main if missing); default main.
        token: a Hub token; default the environment / saved login.
        commit_message: default "Upload <name> (hf_wavepos <version>)".
    """
    from huggingface_hub import HfApi, get_token

    check_folder(folder)
    token = token or get_token()
    if not token:
        raise RuntimeError("no Hugging Face token: run `huggingface-cli login`, set HF_TOKEN, or pass --token. "
                           "Nothing was uploaded.")
    api = HfApi(token=token)
    try:
        api.whoami()
    except Exception as err:  # offline, refused token, or Hub unreachable: stop before any write
        raise RuntimeError(f"cannot reach the Hugging Face Hub with this token ({type(err).__name__}: {err}). "
                           "Nothing was uploaded.") from err
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), revision=revision,
        commit_message=commit_message or f"Upload {Path(folder).name} (hf_wavepos {__version__})",
    )
    return str(getattr(commit, "commit_url", commit))
