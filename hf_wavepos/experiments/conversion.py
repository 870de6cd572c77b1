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

from hf_wavepos.experiments.conversion_config import (  # noqa: F401  (public names of the benchmark)
    CONVERTED,
    POSITIONS,
    RECIPES,
    ROPE_SCALING,
    TRANSFER_RECIPES,
    ConversionConfig,
    parse_method,
    slug,
)
from hf_wavepos.experiments.conversion_report import (  # noqa: F401
    markdown_table,
    record_scores,
    recovery_curve,
    tokens_to_within,
    write_readme,
    write_results,
)


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


def train_config(config: ConversionConfig, method: str, stock: Path, out: Path, stage: str | None = None) -> Any:
    """The training loop's `TrainConfig` for one trained method (identical data, seed and batch).

    Args:
        stage: for the transfer recipes, ``"transfer"`` (attention transfer from the stock checkpoint:
            ``transfer_trainable`` for ``transfer_steps`` at ``transfer_lr``) or ``"distill"`` (the
            second stage of ``transfer-distill``: ``transfer_distill_trainable`` distilled to the stock
            model at ``transfer_distill_lr``, starting from the transfer run); None for the other recipes.
    """
    from transformers import AutoConfig

    from hf_wavepos.training import TrainConfig

    position, recipe = parse_method(method)
    scaled = rope_parameters(position, AutoConfig.from_pretrained(stock), config.rope_factor)
    lora = recipe.startswith("lora")
    per_device = config.per_device_batch_size or config.global_batch_size
    pretrained, model_position, steps, lr = str(stock), CONVERTED.get(position, "rope"), config.steps, config.lr
    distill = {"enabled": recipe.endswith("distill"), "weight": config.distill_weight,
               "temperature": config.distill_temperature}
    name = slug(method)
    if stage == "transfer":
        steps, lr, name = config.transfer_steps, config.transfer_lr, slug(f"{position}:transfer")
        distill = {"enabled": True, "target": "attention", "trainable": _names(config.transfer_trainable)}
    elif stage == "distill":
        pretrained, model_position = str(out / "models" / slug(f"{position}:transfer") / "final"), "keep"
        distill["teacher"] = str(stock)  # the transfer run's own RoPE revert would carry its new q/k weights
        distill["trainable"] = _names(config.transfer_distill_trainable)
        lr = config.transfer_distill_lr or lr
    return TrainConfig.from_dict({
        "model": {"pretrained": pretrained, "position": model_position,
                  "config_overrides": {"rope_parameters": scaled} if scaled else {}},
        "data": {"dataset": "stdlib", "max_documents": config.train_documents,
                 "validation_size": config.heldout_documents, "block_size": config.block_size},
        "train": {"seed": config.seed, "global_batch_size": config.global_batch_size,
                  "per_device_batch_size": per_device, "max_steps": steps,
                  "mixed_precision": config.mixed_precision,
                  "gradient_checkpointing": config.gradient_checkpointing and stage != "transfer"},
        "optim": {"lr": config.lora_lr if lora else lr, "weight_decay": config.weight_decay},
        "schedule": {"name": "cosine", "warmup_steps": min(config.warmup_steps, steps), "min_lr_ratio": 0.1},
        "lora": {"enabled": lora, "r": config.lora_r, "alpha": config.lora_alpha, "train_norms": True,
                 "save_merged": True},
        "distill": distill,
        "checkpoint": {"every_steps": None, "keep_last": 1},
        "eval": {"every_steps": config.eval_every, "max_blocks": config.eval_blocks, "at_start": stage != "distill"},
        "log": {"trackers": [], "every_steps": max(1, steps // 20), "run_name": f"conversion_{name}"},
        "output_dir": str(out / "models" / name),
    })


def _names(modules: tuple[str, ...] | None) -> list[str] | None:
    return list(modules) if modules is not None else None


def training_stages(config: ConversionConfig, method: str) -> list[tuple[str, str | None]]:
    """The training runs of a method, in order: ``(run folder name, stage)`` (see `train_config`)."""
    position, recipe = parse_method(method)
    if recipe not in TRANSFER_RECIPES:
        return [(slug(method), None)]
    stages = [(slug(f"{position}:transfer"), "transfer")]
    return stages + [(slug(method), "distill")] if recipe == "transfer-distill" else stages


def load_method_model(config: ConversionConfig, method: str, folder: str | Path) -> Any:
    """The model of a method, ready to evaluate (eval mode, on the GPU when there is one).

    Trained methods load their saved folder as it is; zero-shot methods load the stock folder and
    apply the RoPE scaling or the position conversion.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from hf_wavepos.models import apply_wavepos
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


def _differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [d for k in sorted(set(saved) | set(now)) for d in _differences(saved.get(k), now.get(k), f"{prefix}{k}.")]
    return [] if saved == now else [prefix.rstrip(".")]


def _check_same_training(run_dir: Path, now: dict[str, Any]) -> None:
    """Refuse to reuse a finished run trained with other settings than the benchmark's config now asks.

    Raises:
        ValueError: naming the differing settings and the fix (another ``--out`` or removing the run).
    """
    import yaml

    from hf_wavepos.training import TrainConfig

    saved_file = run_dir / "train_config.yaml"
    # read back through TrainConfig: settings added since that run get their defaults
    saved = TrainConfig.from_dict(yaml.safe_load(saved_file.read_text())).to_dict() if saved_file.is_file() else {}
    ignored = ("log", "eval")  # neither changes the trained weights
    changed = _differences({k: v for k, v in saved.items() if k not in ignored},
                           {k: v for k, v in now.items() if k not in ignored})
    if changed:
        raise ValueError(f"{run_dir} was trained with other settings than this config asks ({', '.join(changed)} "
                         "differ from its train_config.yaml); use another --out or remove that folder to retrain.")


def _train_method(config: ConversionConfig, method: str, stock: Path, out: Path, label: str) -> dict[str, Any]:
    """Train one method, stage by stage (or reuse its finished runs); return its training record and
    its recovery curve (the stages' held-out evaluations joined on one token axis)."""
    from hf_wavepos.training import train

    tokens_per_step = config.global_batch_size * config.block_size
    curve, seconds, tokens, record = [], 0.0, 0, {}
    for name, stage in training_stages(config, method):
        run_dir = out / "models" / name
        summary_file = run_dir / "train_summary.json"
        run_config = train_config(config, method, stock, out, stage)
        if summary_file.is_file():
            _check_same_training(run_dir, run_config.to_dict())
            print(f"{label} {method}: {name} trained earlier with the same settings, reusing {run_dir}", flush=True)
            record = json.loads(summary_file.read_text())
        else:
            what = "attention transfer" if stage == "transfer" else RECIPES[parse_method(method)[1]]
            print(f"{label} training {method} [{name}] ({what}): {run_config.train.max_steps} steps x "
                  f"{config.global_batch_size} blocks of {config.block_size}", flush=True)
            t0 = time.time()
            result = train(run_config)
            record = dict(result.summary, seconds=time.time() - t0)
            summary_file.write_text(json.dumps(record, indent=2) + "\n")
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # optimiser state: not needed here
        stage_curve = recovery_curve(run_dir, tokens_per_step)
        curve += [dict(row, tokens=row["tokens"] + tokens, stage=stage or "train") for row in stage_curve
                  if not (curve and row["step"] == 0)]
        tokens += record["steps"] * tokens_per_step
        seconds += record["seconds"]
    return {"folder": record["final_model"], "trained_tokens": tokens,
            "train_minutes": seconds / 60, "tokens_per_second": record.get("tokens_per_second"),
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
        if config.extension_passkey:
            settings["extension_passkey"] = {**settings["passkey"], "lengths": [config.extension_length]}
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
        else:  # passkey, at the passkey lengths or (extension_passkey) at the extension length
            result = run_passkey(model, tokenizer, settings[part]["lengths"], list(config.passkey_depths),
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
    from hf_wavepos.experiments.extrapolation import run_record

    out = Path(out)
    started = time.time()
    if config.threads is not None:
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
        record_scores(methods[method], scores[method], texts)

    target, extension = write_results(config, methods, scores, texts, descriptions, out)

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
