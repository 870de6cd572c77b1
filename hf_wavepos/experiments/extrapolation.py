"""The position-encoding extrapolation benchmark (``wavepos bench extrapolation``, and the demo).

Every method trains the same Llama-style model with the project's one training loop
(`hf_wavepos.training.train`): identical tokenizer, data, steps, batch and seed; only the
position method differs. Each is then scored with full-sequence perplexity
(`hf_wavepos.eval.perplexity`) at several multiples of the training length, on held-out files of
the embedded corpus (the Python standard library source) that are long enough for the longest
window. Outputs: ``perplexity.{json,csv,png}`` (the evaluation run folder), ``extrapolation.json``
(settings, device, versions, perplexities, ratios to the training length), and the trained models.

Configs are YAML files of `ExtrapolationConfig` fields; the shipped ones are
``hf_wavepos/experiments/configs/extrapolation_*.yaml`` (`hf_wavepos.experiments.bench_configs`).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_wavepos.machine import device_name

# Method name -> the training loop's ``model.position`` value (RoPE is the stock model).
BENCH_METHODS: dict[str, Any] = {
    "nope": {"method": "nope"},
    "rope": "rope",
    "alibi": {"method": "alibi"},
    "oka2025": "oka2025",
    "oka2025-n-m": {"preset": "oka2025", "sign_convention": "n-m"},
    "long": "long",
    "long-no-logn": {"preset": "long", "log_n_scaling": False},
    "gaussian": {"preset": "oka2025", "wavelet": "gaussian"},
    # The reflected Haar (support t in [-1, 0)) is causal under t = n - m only (see WavePosConfig).
    "haar": {"preset": "oka2025", "wavelet": "haar", "sign_convention": "n-m"},
    "morlet": {"preset": "oka2025", "wavelet": "morlet"},
}


@dataclass(frozen=True)
class ExtrapolationConfig:
    """One benchmark: model, data, budget, methods and evaluation lengths."""

    methods: tuple[str, ...] = ("rope", "long", "alibi")
    block_size: int = 64  # L_train
    steps: int = 600
    global_batch_size: int = 16
    per_device_batch_size: int | None = None
    lr: float = 3e-3
    warmup_steps: int | None = None
    vocab_size: int = 2048
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    head_dim: int | None = None  # None: hidden_size // heads
    intermediate_size: int = 384
    train_documents: int | None = 600
    heldout_documents: int = 60
    eval_documents: int = 40  # the calibration (docs/METHOD.md, Sec. 4) scores 40 held-out long files
    length_multiples: tuple[float, ...] = (1, 2, 4, 8, 16)
    seed: int = 0
    threads: int | None = 2
    mixed_precision: str = "no"
    eval_batch_size: int = 1
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in BENCH_METHODS]
        if unknown:
            raise ValueError(f"methods {unknown} are unknown; allowed values: {', '.join(BENCH_METHODS)}.")
        if not self.methods:
            raise ValueError("methods is empty; name at least one of: " + ", ".join(BENCH_METHODS) + ".")
        for name in ("block_size", "steps", "global_batch_size", "vocab_size", "eval_documents", "heldout_documents"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}.")
        from hf_wavepos.experiments.bench_configs import check_shared_values

        check_shared_values(self)

    @property
    def lengths(self) -> list[int]:
        return sorted({int(self.block_size * m) for m in self.length_multiples})

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "ExtrapolationConfig":
        """Read a YAML file of fields, or a shipped config by name (see `read_bench_config`).

        Raises:
            FileNotFoundError: neither a file nor a shipped name.
            ValueError: unknown keys (listing the known ones) or invalid values.
        """
        from hf_wavepos.experiments.bench_configs import read_bench_config

        return read_bench_config(cls, path, overrides)


def train_config(config: ExtrapolationConfig, method: str, tokenizer_dir: Path, out: Path, blocks: Path | None = None):
    """The training loop's `TrainConfig` for one method of the benchmark.

    ``blocks``: a folder of pre-packed training blocks (`hf_wavepos.data.blocks`) to train on
    instead of the standard library documents.
    """
    from hf_wavepos.training import load_config

    model_overrides = {
        "hidden_size": config.hidden_size, "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads, "num_key_value_heads": config.heads,
        "intermediate_size": config.intermediate_size, "tie_word_embeddings": True,
    }
    if config.head_dim is not None:
        model_overrides["head_dim"] = config.head_dim
    per_device = config.per_device_batch_size or config.global_batch_size
    overrides = [
        "model.architecture=llama", "model.size=tiny", f"model.tokenizer={tokenizer_dir}",
        f"model.config_overrides={json.dumps(model_overrides)}", f"model.position={json.dumps(BENCH_METHODS[method])}",
        f"data.dataset={blocks or 'stdlib'}", f"data.validation_size={config.heldout_documents}",
        f"data.max_documents={json.dumps(None if blocks else config.train_documents)}",
        f"data.block_size={config.block_size}",
        f"train.seed={config.seed}", f"train.global_batch_size={config.global_batch_size}",
        f"train.per_device_batch_size={per_device}", f"train.max_steps={config.steps}",
        f"train.mixed_precision={json.dumps(config.mixed_precision)}",
        f"optim.lr={config.lr}", "optim.weight_decay=0.1", "optim.max_grad_norm=1.0",
        "schedule.name=cosine", f"schedule.warmup_steps={config.warmup_steps or max(1, config.steps // 20)}",
        "schedule.min_lr_ratio=0.1", f"checkpoint.every_steps={config.steps}", "checkpoint.keep_last=1",
        "eval.max_blocks=32", "log.trackers=[]", f"log.every_steps={max(1, config.steps // 10)}",
        f"log.run_name=extrapolation_{method}", f"output_dir={out / 'models' / method}",
    ]
    return load_config(None, overrides)


def ratio_table(results: dict[str, list[dict]], block_size: int) -> dict[str, dict[str, float]]:
    """Perplexity at each length divided by the perplexity at the training length, per model."""
    table = {}
    for label, rows in results.items():
        by_length = {r["length"]: r["perplexity"] for r in rows}
        if block_size in by_length:
            table[label] = {f"{n / block_size:g}x": by_length[n] / by_length[block_size] for n in sorted(by_length)}
    return table


def format_table(results: dict[str, list[dict]], block_size: int) -> str:
    """Perplexity by length, with the ratio to the training length, as a text table."""
    labels = list(results)
    lengths = sorted({r["length"] for rows in results.values() for r in rows})
    ratios = ratio_table(results, block_size)
    lines = ["tokens".rjust(12) + "".join(label.rjust(22) for label in labels)]
    for n in lengths:
        cells = []
        for label in labels:
            ppl = next(r["perplexity"] for r in results[label] if r["length"] == n)
            ratio = ratios.get(label, {}).get(f"{n / block_size:g}x")
            cells.append((f"{ppl:9.2f}" + (f" ({ratio:.2f}x)" if ratio is not None else "")).rjust(22))
        lines.append(f"{n} ({n / block_size:g}x)".rjust(12) + "".join(cells))
    return "\n".join(lines)


def prepare_corpus(config: ExtrapolationConfig, out: Path, step: str) -> tuple[Any, Any]:
    """Shared first step of the benchmarks: threads, output folder, the standard library split into
    training and held-out files, and a BPE tokenizer trained on the training files (saved to
    ``out/tokenizer``).

    Args:
        config: the benchmark (threads, seed, held-out files, vocabulary size).
        out: the output folder (created).
        step: progress label printed before the step, e.g. ``"[1/5]"``.

    Returns:
        ``(splits, tokenizer)``: `hf_wavepos.data.TextSplits` and the trained tokenizer.
    """
    from hf_wavepos.data.tokenizers import train_bpe_tokenizer

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{step} BPE tokenizer ({config.vocab_size}) on the standard library source", flush=True)
    splits = stdlib_splits(config)
    tokenizer = train_bpe_tokenizer(splits.train["text"], config.vocab_size)
    tokenizer.save_pretrained(out / "tokenizer")
    return splits, tokenizer


def stdlib_splits(config: ExtrapolationConfig) -> Any:
    """The benchmark's standard-library files, split into training and held-out files
    (``heldout_documents``, ``train_documents``, ``seed``): the same split for a run and its rescoring."""
    from hf_wavepos.data import load_text_splits

    return load_text_splits("stdlib", validation_size=config.heldout_documents, seed=config.seed,
                            max_documents=config.train_documents)


def run_record(config: ExtrapolationConfig) -> dict[str, Any]:
    """What every benchmark JSON starts with: settings, lengths, device and package versions."""
    import transformers

    from hf_wavepos.version import __version__

    return {
        "settings": asdict(config), "lengths": config.lengths, "device": device_name(),
        "versions": {"hf_wavepos": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }


def run_extrapolation(config: ExtrapolationConfig, out: str | Path, progress_prefix: str = "") -> dict[str, Any]:
    """Train every method, score perplexity by length, write the results under ``out``.

    Returns:
        The summary also written to ``out/extrapolation.json``: settings, device, versions,
        training results, perplexity rows per method and ratios to the training length.
    """
    from hf_wavepos.training import train

    out = Path(out)
    started = time.time()
    total = len(config.methods) + 2
    splits, tokenizer = prepare_corpus(config, out, f"{progress_prefix}[1/{total}]")
    texts = eval_texts(config, splits, tokenizer)
    trained: dict[str, dict[str, Any]] = {}
    for i, method in enumerate(config.methods, start=2):
        print(f"{progress_prefix}[{i}/{total}] training {method}: L_train {config.block_size}, {config.steps} steps x "
              f"{config.global_batch_size} blocks", flush=True)
        t0 = time.time()
        result = train(train_config(config, method, out / "tokenizer", out))
        trained[method] = {"folder": result.final_model, "seconds": time.time() - t0, "train_loss": result.train_loss,
                           "val_loss": result.val_loss, "tokens_per_second": result.tokens_per_second}
    print(f"{progress_prefix}[{total}/{total}] full-sequence perplexity at {config.lengths} tokens on "
          f"{len(texts)} held-out files", flush=True)
    summary = score_methods(config, {m: t["folder"] for m, t in trained.items()}, texts, tokenizer, out)
    summary.update(training=trained, seconds=time.time() - started)
    return _write_summary(summary, config, out)


def rescore_run(run: str | Path, out: str | Path, eval_documents: int) -> dict[str, Any]:
    """Score the models of a finished `run_extrapolation` run again on another number of held-out
    files (same split, tokenizer and lengths; no training). Writes ``extrapolation.json`` (with the
    run's training record) and ``perplexity.{json,csv,png}`` under ``out``.

    Args:
        run: the finished run's folder (``extrapolation.json``, ``tokenizer/``, ``models/``).
        out: where to write (not ``run`` itself: the run's own results are kept).
        eval_documents: how many held-out long files to score.
    """
    from transformers import AutoTokenizer

    run, out = Path(run), Path(out)
    if out.resolve() == run.resolve():
        raise ValueError(f"out={out} is the run folder: choose another folder so the run's own results are kept.")
    record_file = run / "extrapolation.json"
    if not record_file.is_file():
        raise FileNotFoundError(f"{record_file} not found: run is not a finished `wavepos bench extrapolation` run.")
    record = json.loads(record_file.read_text())
    settings = dict(record["settings"], eval_documents=eval_documents)
    settings.update((k, tuple(settings[k])) for k in ("methods", "length_multiples"))
    config = ExtrapolationConfig(**settings)
    tokenizer = AutoTokenizer.from_pretrained(run / "tokenizer")
    texts = eval_texts(config, stdlib_splits(config), tokenizer)
    folders = {m: str(run / "models" / m / "final") for m in config.methods}
    out.mkdir(parents=True, exist_ok=True)
    summary = score_methods(config, folders, texts, tokenizer, out)
    summary.update(training=record["training"], rescored_from=str(run))
    return _write_summary(summary, config, out)


def _write_summary(summary: dict[str, Any], config: ExtrapolationConfig, out: Path) -> dict[str, Any]:
    (out / "extrapolation.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_table(summary["perplexity"], config.block_size), flush=True)
    return summary


def eval_texts(config: ExtrapolationConfig, splits: Any, tokenizer: Any) -> list[str]:
    """The first ``config.eval_documents`` held-out files with at least the longest evaluation
    length in tokens (fewer, with a notice, when the held-out split has fewer such files)."""
    longest = max(config.lengths)
    texts = [t for t in splits.validation["text"] if len(tokenizer(t).input_ids) >= longest][: config.eval_documents]
    if not texts:
        raise ValueError(f"no held-out file has {longest} tokens: lower length_multiples or raise heldout_documents.")
    if len(texts) < config.eval_documents:
        print(f"note: only {len(texts)} of the {config.heldout_documents} held-out files have {longest} tokens "
              f"(eval_documents={config.eval_documents}); raise heldout_documents for more.", flush=True)
    return texts


def score_methods(config: ExtrapolationConfig, folders: dict[str, str], texts: list[str], tokenizer: Any,
                  out: Path) -> dict[str, Any]:
    """Full-sequence perplexity of each trained model (method -> saved folder) at ``config.lengths``
    on ``texts``; writes ``perplexity.{json,csv,png}`` under ``out`` and returns the benchmark
    record (settings, device, versions, perplexity rows, ratios to the training length)."""
    from transformers import AutoModelForCausalLM

    from hf_wavepos.eval.perplexity import perplexity_report
    from hf_wavepos.eval.report import write_perplexity

    def models():
        for method, folder in folders.items():
            model = AutoModelForCausalLM.from_pretrained(folder)
            yield method, model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), tokenizer

    report = perplexity_report(models(), texts, config.lengths, mode="full", batch_size=config.eval_batch_size,
                               source=f"stdlib held-out files (>= {max(config.lengths)} tokens)")
    write_perplexity(report, out, train_length=config.block_size)
    return {
        "benchmark": "position-encoding extrapolation (full-sequence perplexity by length)", **run_record(config),
        "eval_documents": len(texts), "perplexity": report["results"],
        "ratio_to_train_length": ratio_table(report["results"], config.block_size),
    }
