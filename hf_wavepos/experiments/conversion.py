"""The conversion benchmark (``wavepos bench conversion``): extend a real pretrained RoPE model.

One pretrained checkpoint (a folder, Hub id or GGUF file; the committed runs use SmolLM2-135M) is
saved once as a plain stock checkpoint (`hf_wavepos.convert.convert_checkpoint` with ``"rope"``),
then every method starts from it with identical data (the standard library source, the same
training / held-out files), steps, batch, learning rate and seed; only the position method and
the recalibration recipe differ. A method is ``POSITION:RECIPE``:

    positions  rope                        the stock model (RoPE as pretrained)
               rope-linear / rope-dynamic / rope-yarn
                                           transformers' own RoPE scaling (``rope_parameters``:
                                           position interpolation, dynamic NTK, YaRN) by ``rope_factor``
               nope / alibi / long / oka2025 / oka2025-4k
                                           converted with `hf_wavepos.apply_wavepos` (nope = DroPE;
                                           log-n presets get train_length = block_size)
    recipes    zero-shot                   no training
               plain                       all weights, next-token loss
               distill                     all weights, KL to the stock model's logits (self-distillation,
                                           `hf_wavepos.training.distill`) mixed with next-token loss
               lora / lora-distill         LoRA on the attention projections + trainable norms

Training runs the project's one loop (`hf_wavepos.training.train`) with a held-out evaluation
every ``eval_every`` steps, including step 0 (right after conversion): the recovery curve. The
fine-tuned stock model (``control``, default ``rope:plain``) is the control: the data alone moves
perplexity. Then, one model at a time: full-sequence perplexity (`hf_wavepos.eval.perplexity`) at
``length_multiples`` x the recalibration length on held-out files, optionally at
``extension_length`` (past the model's own context) on held-out files joined into long documents,
and passkey accuracy (`hf_wavepos.eval.passkey`, the ``wavepos eval passkey`` task).

Outputs under ``out``: ``conversion.json`` (settings, device, versions, per method: training
record, recovery curve, tokens to come within 25% / 10% of the control, perplexity and passkey
accuracy by length), ``recovery.{csv,png}``, ``perplexity.{json,csv,png}``, ``passkey.{json,csv}``
(+ a heatmap per method and ``passkey_by_length.png``), ``extension/`` (the long-context scores),
``run.json`` (the evaluation manifest), ``README.md`` (the table), and — not for committing — the
stock checkpoint (``stock/``) and the trained models (``models/``). A method whose
``models/<method>/train_summary.json`` exists is not trained again, and its ``scores.json`` is
reused when the evaluation settings match, so a long benchmark can run in several sittings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROPE_SCALING = {"rope-linear": "linear", "rope-dynamic": "dynamic", "rope-yarn": "yarn"}
CONVERTED: dict[str, Any] = {
    "nope": {"method": "nope"},
    "alibi": {"method": "alibi"},
    "long": "long",
    "oka2025": "oka2025",
    "oka2025-4k": "oka2025-4k",
}
POSITIONS = ("rope", *ROPE_SCALING, *CONVERTED)
RECIPES = {
    "zero-shot": "no training",
    "plain": "all weights, next-token loss",
    "distill": "all weights, KL to the stock model + (1 - distill_weight) x next-token loss",
    "lora": "LoRA (q, k, v, o) + trainable norms, next-token loss",
    "lora-distill": "LoRA (q, k, v, o) + trainable norms, distillation loss",
}


def parse_method(method: str) -> tuple[str, str]:
    """``"long:distill"`` -> ``("long", "distill")`` (see the module docstring).

    Raises:
        ValueError: an unknown position or recipe, naming the allowed ones.
    """
    position, sep, recipe = method.partition(":")
    if not sep or position not in POSITIONS or recipe not in RECIPES:
        raise ValueError(f"method {method!r} must be POSITION:RECIPE with POSITION in {', '.join(POSITIONS)} and "
                         f"RECIPE in {', '.join(RECIPES)} (e.g. long:distill).")
    return position, recipe


@dataclass(frozen=True)
class ConversionConfig:
    """One conversion benchmark: source model, methods, recalibration budget, evaluation.

    Lengths are in tokens of the source model's tokenizer; ``lengths`` = ``length_multiples`` x
    ``block_size`` (the recalibration length).
    """

    source: str = "SmolLM2-135M-Instruct.Q4_1.gguf"  # folder, Hub id, .gguf file or a folder with one
    gguf_file: str | None = None
    methods: tuple[str, ...] = ("rope:plain", "nope:distill", "long:distill")
    control: str = "rope:plain"
    block_size: int = 256
    steps: int = 100
    global_batch_size: int = 4
    per_device_batch_size: int | None = None
    lr: float = 3e-4
    lora_lr: float = 2e-3  # LoRA recipes (adapters start at zero)
    warmup_steps: int = 10
    weight_decay: float = 0.0
    seed: int = 0
    train_documents: int | None = 400
    heldout_documents: int = 60
    eval_every: int = 25
    eval_blocks: int = 16
    eval_documents: int = 8
    length_multiples: tuple[float, ...] = (1, 4, 8)
    extension_length: int | None = None
    extension_documents: int = 4
    extension_methods: tuple[str, ...] | None = None  # None: every method; (): none
    passkey_multiples: tuple[float, ...] = (1, 4, 8)
    passkey_depths: tuple[float, ...] = (0.0, 0.5, 1.0)
    passkey_samples: int = 2
    passkey_haystack: str = "debian-faq"
    distill_weight: float = 0.9
    distill_temperature: float = 1.0
    lora_r: int = 16
    lora_alpha: float = 32.0
    rope_factor: float = 2.0
    threads: int | None = 2
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    eval_batch_size: int = 1

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods is empty; name at least one POSITION:RECIPE, e.g. rope:plain.")
        for method in (*self.methods, self.control, *(self.extension_methods or ())):
            parse_method(method)
        missing = [m for m in self.extension_methods or () if m not in self.methods]
        if missing:
            raise ValueError(f"extension_methods {missing} are not in methods; list only benchmarked methods.")
        if self.control not in self.methods or parse_method(self.control)[1] == "zero-shot":
            raise ValueError(f"control={self.control!r} must be one of the trained methods (default rope:plain).")
        for name in ("block_size", "steps", "global_batch_size", "eval_every", "eval_blocks", "eval_documents",
                     "heldout_documents", "passkey_samples", "extension_documents"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not self.rope_factor >= 1:
            raise ValueError(f"rope_factor must be >= 1 (the context extension factor), got {self.rope_factor}.")
        if not 0 < self.distill_weight <= 1:
            raise ValueError(f"distill_weight must be in (0, 1], got {self.distill_weight}.")

    def subset(self, methods: tuple[str, ...]) -> "ConversionConfig":
        """The same benchmark for a subset of its methods (``extension_methods`` restricted alike)."""
        extension = tuple(m for m in self.extension_methods if m in methods) if self.extension_methods else None
        return dataclasses.replace(self, methods=methods, extension_methods=extension)

    @property
    def lengths(self) -> list[int]:
        """Perplexity lengths in tokens."""
        return sorted({int(self.block_size * m) for m in self.length_multiples})

    @property
    def passkey_lengths(self) -> list[int]:
        """Passkey prompt lengths in tokens."""
        return sorted({int(self.block_size * m) for m in self.passkey_multiples})

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "ConversionConfig":
        """Read a YAML file of fields (unknown keys raise ValueError listing the known ones)."""
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        data.update(overrides)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {unknown}; known fields: {', '.join(sorted(known))}.")
        for key, value in data.items():
            if isinstance(value, list):
                data[key] = tuple(value)
        return cls(**data)


def slug(method: str) -> str:
    """Folder name of a method: ``long:distill`` -> ``long_distill``."""
    return method.replace(":", "_")


def rope_parameters(position: str, config: Any, factor: float) -> dict[str, Any] | None:
    """transformers ``rope_parameters`` of a RoPE-scaling position (None for the others).

    The scaled RoPE keeps ``max_position_embeddings`` and names the pretrained context as
    ``original_max_position_embeddings``: PI divides every position by ``factor``, dynamic NTK
    raises the base only past that context, YaRN rescales the low frequencies and the logits.
    """
    if position not in ROPE_SCALING:
        return None
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
    parameters = {"rope_type": ROPE_SCALING[position], "rope_theta": theta, "factor": float(factor)}
    if position != "rope-linear":  # PI takes no context length
        parameters["original_max_position_embeddings"] = int(config.max_position_embeddings)
    return parameters


def train_config(config: ConversionConfig, method: str, stock: Path, out: Path) -> Any:
    """The training loop's `TrainConfig` for one trained method (identical data, steps, seed)."""
    from transformers import AutoConfig

    from hf_wavepos.training import TrainConfig

    position, recipe = parse_method(method)
    scaled = rope_parameters(position, AutoConfig.from_pretrained(stock), config.rope_factor)
    lora = recipe.startswith("lora")
    per_device = config.per_device_batch_size or config.global_batch_size
    return TrainConfig.from_dict({
        "model": {"pretrained": str(stock), "position": CONVERTED.get(position, "rope"),
                  "config_overrides": {"rope_parameters": scaled} if scaled else {}},
        "data": {"dataset": "stdlib", "max_documents": config.train_documents,
                 "validation_size": config.heldout_documents, "block_size": config.block_size},
        "train": {"seed": config.seed, "global_batch_size": config.global_batch_size,
                  "per_device_batch_size": per_device, "max_steps": config.steps,
                  "mixed_precision": config.mixed_precision, "gradient_checkpointing": config.gradient_checkpointing},
        "optim": {"lr": config.lora_lr if lora else config.lr, "weight_decay": config.weight_decay},
        "schedule": {"name": "cosine", "warmup_steps": config.warmup_steps, "min_lr_ratio": 0.1},
        "lora": {"enabled": lora, "r": config.lora_r, "alpha": config.lora_alpha, "train_norms": True,
                 "save_merged": True},
        "distill": {"enabled": recipe.endswith("distill"), "weight": config.distill_weight,
                    "temperature": config.distill_temperature},
        "checkpoint": {"every_steps": None, "keep_last": 1},
        "eval": {"every_steps": config.eval_every, "max_blocks": config.eval_blocks, "at_start": True},
        "log": {"trackers": [], "every_steps": max(1, config.steps // 20), "run_name": f"conversion_{slug(method)}"},
        "output_dir": str(out / "models" / slug(method)),
    })


def recovery_curve(run_dir: str | Path, tokens_per_step: int) -> list[dict[str, float]]:
    """Held-out loss against recalibration step of a finished training run (its ``metrics.jsonl``).

    Returns:
        Rows ``{"step", "tokens", "val_loss", "perplexity"}`` in step order (step 0: before training).
    """
    rows = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "val_loss" in record:
            rows[record["step"]] = record["val_loss"]
    return [{"step": s, "tokens": s * tokens_per_step, "val_loss": v, "perplexity": math.exp(v)}
            for s, v in sorted(rows.items())]


def tokens_to_within(curve: list[dict[str, float]], target: float, margin: float) -> int | None:
    """Training tokens after which held-out perplexity is first <= (1 + margin) x ``target`` (None: never)."""
    return next((row["tokens"] for row in curve if row["perplexity"] <= (1 + margin) * target), None)


def load_method_model(config: ConversionConfig, method: str, folder: str | Path) -> Any:
    """The model of a method, ready to evaluate (eval mode, on the GPU when there is one).

    Trained methods load their saved folder as it is; zero-shot methods load the stock folder and
    apply the RoPE scaling or the position conversion.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from hf_wavepos import apply_wavepos
    from hf_wavepos.training import resolve_position

    position, recipe = parse_method(method)
    hf_config = AutoConfig.from_pretrained(folder)
    if recipe == "zero-shot" and position in ROPE_SCALING:
        hf_config.rope_parameters = rope_parameters(position, hf_config, config.rope_factor)
    model = AutoModelForCausalLM.from_pretrained(folder, config=hf_config)
    if recipe == "zero-shot" and position in CONVERTED:
        model = apply_wavepos(model, resolve_position(CONVERTED[position], config.block_size))
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def long_documents(texts: list[str], tokenizer: Any, length: int, count: int) -> tuple[list[str], str]:
    """``count`` documents of at least ``length`` tokens: held-out files that long, then held-out
    files joined (in order, with blank lines) until each reaches the length.

    Returns:
        The documents and a description of how they were made.

    Raises:
        ValueError: the held-out files together are too short for ``count`` documents.
    """
    sizes = [len(tokenizer(t, verbose=False).input_ids) for t in texts]
    whole = [t for t, n in zip(texts, sizes) if n >= length][:count]
    joined, current, current_tokens = [], [], 0
    for text, n in zip(texts, sizes):
        if len(whole) + len(joined) >= count:
            break
        if n >= length:
            continue
        current.append(text)
        current_tokens += n
        if current_tokens >= length:
            joined.append("\n\n".join(current))
            current, current_tokens = [], 0
    documents = whole + joined
    if len(documents) < count:
        raise ValueError(f"the held-out files make only {len(documents)} documents of {length} tokens, fewer than "
                         f"{count}: raise heldout_documents or lower the length / the document count.")
    return documents, f"{len(whole)} held-out files of >= {length} tokens and {len(joined)} made of joined held-out files"


def plot_recovery(curves: dict[str, list[dict]], control_ppl: float, path: Path, title: str) -> Path:
    """Held-out perplexity (log y) against training tokens, one line per trained method; the
    control's final perplexity and 1.1x / 1.25x of it as horizontal lines."""
    from hf_wavepos.eval.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), constrained_layout=True)
    for method, rows in curves.items():
        ax.plot([r["tokens"] for r in rows], [r["perplexity"] for r in rows], marker="o", markersize=3, label=method)
    for factor, style in ((1.0, "-"), (1.1, "--"), (1.25, ":")):
        ax.axhline(factor * control_ppl, color="grey", linestyle=style, linewidth=1,
                   label=f"{factor:g} x control ({factor * control_ppl:.2f})")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda y, _: f"{y:g}")  # 20, 50, 100 rather than 2 x 10^1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if f"{y:e}"[0] in "25" else ""))
    ax.set_xlabel("recalibration tokens")
    ax.set_ylabel("held-out perplexity at the recalibration length (log)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="x-small", ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(summary: dict[str, Any]) -> str:
    """The results table of ``conversion.json`` as Markdown (one row per method)."""
    settings = summary["settings"]
    lengths = summary["lengths"]
    passkey = summary.get("passkey_lengths", [])
    ext = settings.get("extension_length")
    header = ["method", "trained tokens", "train min", "held-out ppl: start -> end", "vs control",
              "tokens to 1.25x", "tokens to 1.1x", *(f"ppl {n}" for n in lengths),
              *((f"ppl {ext}",) if ext else ()), *(f"passkey {n}" for n in passkey)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, row in summary["methods"].items():
        curve = row.get("recovery") or []
        start_end = f"{curve[0]['perplexity']:.2f} -> {curve[-1]['perplexity']:.2f}" if curve else "-"
        cells = [f"`{method}`", _fmt(row.get("trained_tokens")), _fmt(row.get("train_minutes"), 1), start_end,
                 _fmt(row.get("vs_control")) + ("x" if row.get("vs_control") else ""),
                 _fmt(row.get("tokens_to_1.25x")), _fmt(row.get("tokens_to_1.1x")),
                 *(_fmt(row.get("perplexity", {}).get(str(n))) for n in lengths)]
        if ext:
            cells.append(_fmt(row.get("extension_perplexity")))
        cells += [_fmt(row.get("passkey", {}).get(str(n)), 2) for n in passkey]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_readme(summary: dict[str, Any], out: Path, command: str | None = None) -> Path:
    """``out/README.md``: what ran, on which device, and the table."""
    s = summary["settings"]
    control = summary["methods"][s["control"]]
    text = [
        f"# Conversion benchmark: {summary['source_model']}",
        "",
        f"Device: {summary['device']}. Recalibration at {s['block_size']} tokens: {s['steps']} steps x "
        f"{s['global_batch_size']} blocks = {s['steps'] * s['global_batch_size'] * s['block_size']:,} tokens per "
        f"trained method, lr {s['lr']:g} (LoRA {s['lora_lr']:g}), seed {s['seed']}, the same standard-library files "
        f"for every method. Control: `{s['control']}` (held-out perplexity {control['final_perplexity']:.2f}).",
        "",
        f"Command: `{command or summary.get('command', 'wavepos bench conversion')}`",
        "",
        "Columns: held-out perplexity at the recalibration length before and after training (the recovery "
        "curve is recovery.png); its ratio to the control; the training tokens after which it first came "
        "within 25% / 10% of the control (- : not within the budget); full-sequence perplexity by length on "
        f"{summary['perplexity_documents']} held-out files"
        + (f" and at {s['extension_length']} tokens ({summary.get('extension_documents_description')})"
           if s.get("extension_length") else "")
        + f"; passkey accuracy by prompt length ({s['passkey_samples']} samples x {len(s['passkey_depths'])} depths).",
        "",
        markdown_table(summary),
        "",
        f"Training time of the trained methods: {sum(r.get('train_minutes', 0) for r in summary['methods'].values()):.0f} "
        f"min; wall time of the last sitting: {summary['seconds'] / 60:.0f} min (trainings and scores of earlier "
        "sittings are reused, not repeated).",
    ]
    path = out / "README.md"
    path.write_text("\n".join(text) + "\n")
    return path


def _train_method(config: ConversionConfig, method: str, stock: Path, out: Path, label: str) -> dict[str, Any]:
    """Train one method (or reuse its finished run); return its training record and recovery curve."""
    from hf_wavepos.training import train

    run_dir = out / "models" / slug(method)
    summary_file = run_dir / "train_summary.json"
    if summary_file.is_file():
        print(f"{label} {method}: trained earlier, reusing {run_dir}", flush=True)
        record = json.loads(summary_file.read_text())
    else:
        print(f"{label} training {method} ({RECIPES[parse_method(method)[1]]}): {config.steps} steps x "
              f"{config.global_batch_size} blocks of {config.block_size}", flush=True)
        t0 = time.time()
        result = train(train_config(config, method, stock, out))
        record = dict(result.summary, seconds=time.time() - t0)
        summary_file.write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # optimiser state: not needed here
    tokens_per_step = config.global_batch_size * config.block_size
    curve = recovery_curve(run_dir, tokens_per_step)
    return {"folder": record["final_model"], "trained_tokens": config.steps * tokens_per_step,
            "train_minutes": record["seconds"] / 60, "tokens_per_second": record.get("tokens_per_second"),
            "trainable_parameters": record.get("trainable_parameters"), "recovery": curve,
            "final_perplexity": curve[-1]["perplexity"]}


def _scores(config: ConversionConfig, method: str, folder: str, out: Path, tokenizer: Any, texts: dict[str, list[str]],
            descriptions: dict[str, str]) -> dict[str, Any]:
    """Perplexity by length, at the extension length and passkey accuracy of one method. Each part is
    saved in ``scores.json`` next to the model with its settings and reused by a later run with the
    same settings (another part's settings may change)."""
    from hf_wavepos.eval.passkey import run_passkey
    from hf_wavepos.eval.perplexity import perplexity_report

    extended = bool(config.extension_length) and method in (config.methods if config.extension_methods is None
                                                             else config.extension_methods)
    settings = {
        "perplexity": {"lengths": config.lengths, "documents": descriptions["main"], "rope_factor": config.rope_factor},
        "passkey": {"lengths": config.passkey_lengths, "depths": list(config.passkey_depths), "rope_factor":
                    config.rope_factor, "samples": config.passkey_samples, "haystack": config.passkey_haystack,
                    "seed": config.seed},
    }
    if extended:
        settings["extension"] = {"length": config.extension_length, "documents": descriptions["extension"],
                                 "rope_factor": config.rope_factor}
    where = (out / "models" if parse_method(method)[1] != "zero-shot" else out / "zero-shot") / slug(method)
    cache = where / "scores.json"
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    scores = {part: saved[part] for part in settings if part in saved and saved[part]["settings"] == settings[part]}
    todo = [part for part in settings if part not in scores]
    if not todo:
        print(f"    {method}: scores of an earlier run reused ({cache})", flush=True)
        return scores
    model = load_method_model(config, method, folder)
    for part in todo:
        t0 = time.time()
        if part == "perplexity":
            result = perplexity_report([(method, model, tokenizer)], texts["main"], config.lengths,
                                       batch_size=config.eval_batch_size)["results"][method]
        elif part == "extension":
            result = perplexity_report([(method, model, tokenizer)], texts["extension"],
                                       [config.extension_length])["results"][method]
        else:
            result = run_passkey(model, tokenizer, config.passkey_lengths, list(config.passkey_depths),
                                 num_samples=config.passkey_samples, haystack=config.passkey_haystack,
                                 seed=config.seed, label=method)
        scores[part] = {"settings": settings[part], "result": result, "seconds": time.time() - t0}
        where.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({**saved, **scores}, indent=2) + "\n")
    return scores


def run_conversion(config: ConversionConfig, out: str | Path, command: str | None = None) -> dict[str, Any]:
    """Prepare the stock checkpoint, then per method: train (or reuse), score (or reuse); write the
    results (see the module docstring).

    Args:
        config: the benchmark.
        out: output folder (created; trainings and scores found there from an earlier run with the same
            settings are reused, so a long benchmark can run in several sittings).
        command: the command line recorded in the results.

    Returns:
        The summary also written to ``out/conversion.json``.
    """
    from transformers import AutoTokenizer

    from hf_wavepos.convert import convert_checkpoint
    from hf_wavepos.data import load_text_splits
    from hf_wavepos.eval.plots import plot_accuracy_by_length
    from hf_wavepos.eval.report import write_csv, write_perplexity, write_retrieval
    from hf_wavepos.extrapolation import run_record

    out = Path(out)
    started = time.time()
    if config.threads:
        torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    total = len(config.methods) + 1
    stock = out / "stock"
    print(f"[1/{total}] stock checkpoint from {config.source} -> {stock}", flush=True)
    if not (stock / "config.json").is_file():
        print(convert_checkpoint(config.source, stock, "rope", gguf_file=config.gguf_file, overwrite=True).describe(),
              flush=True)
    tokenizer = AutoTokenizer.from_pretrained(stock)
    heldout = list(load_text_splits("stdlib", validation_size=config.heldout_documents, seed=config.seed,
                                    max_documents=config.train_documents).validation["text"])
    texts, descriptions = {}, {}
    texts["main"], descriptions["main"] = long_documents(heldout, tokenizer, max(config.lengths), config.eval_documents)
    if config.extension_length:
        texts["extension"], descriptions["extension"] = long_documents(
            heldout, tokenizer, config.extension_length, config.extension_documents)
    print(f"      perplexity at {config.lengths} tokens on {descriptions['main']}"
          + (f"; at {config.extension_length} on {descriptions['extension']}" if config.extension_length else "")
          + f"; passkey at {config.passkey_lengths} tokens", flush=True)

    methods: dict[str, dict[str, Any]] = {}
    scores: dict[str, dict[str, Any]] = {}
    for i, method in enumerate(config.methods, start=2):
        label = f"[{i}/{total}]"
        if parse_method(method)[1] == "zero-shot":
            print(f"{label} {method}: zero-shot (no training)", flush=True)
            methods[method] = {"folder": str(stock)}
        else:
            methods[method] = _train_method(config, method, stock, out, label)
        scores[method] = _scores(config, method, methods[method]["folder"], out, tokenizer, texts, descriptions)
        row = methods[method]
        row["perplexity"] = {str(r["length"]): r["perplexity"] for r in scores[method]["perplexity"]["result"]}
        if "extension" in scores[method]:
            row["extension_perplexity"] = scores[method]["extension"]["result"][0]["perplexity"]
            row["extension_seconds_per_document"] = scores[method]["extension"]["seconds"] / len(texts["extension"])
        passkey = scores[method]["passkey"]["result"]
        row["passkey"] = {str(n): sum(r[j] for r in passkey["accuracy"]) / len(passkey["depths"])
                          for j, n in enumerate(passkey["lengths"])}

    target = methods[config.control]["final_perplexity"]
    recovery_rows = []
    for method, row in methods.items():
        if row.get("recovery"):
            row["vs_control"] = row["final_perplexity"] / target
            for margin in (0.25, 0.1):
                row[f"tokens_to_{1 + margin:g}x"] = tokens_to_within(row["recovery"], target, margin)
            recovery_rows += [{"method": method, **r} for r in row["recovery"]]
    write_csv(recovery_rows, out / "recovery.csv")
    plot_recovery({m: r["recovery"] for m, r in methods.items() if r.get("recovery")}, target, out / "recovery.png",
                  f"recovery at {config.block_size} tokens ({config.global_batch_size} blocks per step)")
    protocol = {"mode": "full", "stride": None, "num_texts": len(texts["main"]), "max_tokens": None}
    write_perplexity({"task": "perplexity", "protocol": {**protocol, "lengths": config.lengths,
                                                         "source": f"stdlib held-out ({descriptions['main']})"},
                      "results": {m: s["perplexity"]["result"] for m, s in scores.items()}}, out,
                     train_length=config.block_size)
    extension = {m: s["extension"]["result"] for m, s in scores.items() if "extension" in s}
    if extension:
        write_perplexity({"task": "perplexity", "protocol": {**protocol, "num_texts": len(texts["extension"]),
                                                             "lengths": [config.extension_length],
                                                             "source": descriptions["extension"]},
                          "results": extension}, out / "extension", train_length=config.block_size)
    write_retrieval({m: s["passkey"]["result"] for m, s in scores.items()}, out, "passkey")
    plot_accuracy_by_length({m: {int(n): a for n, a in methods[m]["passkey"].items()} for m in config.methods},
                            config.block_size, out / "passkey_by_length.png",
                            f"passkey accuracy ({config.passkey_samples} x {len(config.passkey_depths)} depths per length)")

    summary = {
        "benchmark": "converting a pretrained RoPE model: recovery, perplexity by length, passkey",
        "source_model": config.source if not config.gguf_file else f"{config.source}/{config.gguf_file}",
        "command": command, **run_record(config), "passkey_lengths": config.passkey_lengths,
        "control": config.control, "control_perplexity": target, "perplexity_documents": len(texts["main"]),
        "perplexity_documents_description": descriptions["main"],
        "extension": {"length": config.extension_length, "documents": descriptions["extension"],
                      "methods": list(extension)} if extension else None,
        "extension_documents_description": descriptions.get("extension"), "methods": methods,
        "seconds": time.time() - started,
    }
    (out / "conversion.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_readme(summary, out, command)
    print(markdown_table(summary), flush=True)
    return summary
