"""``wavepos demo``: the main job, on a 2-core CPU, with no network (``make demo``).

1. Train a byte-level BPE tokenizer on the embedded corpus (the Python standard library
   source, minus the held-out files).
2. Train the same tiny Llama three times with the project's one training loop
   (`hf_wavepos.training.train`), identical data, steps and seed, changing only the position
   method: RoPE (the stock model), wavelets (preset ``long``: 16 scales, log-n scaling) and ALiBi.
3. Evaluate full-sequence perplexity (`hf_wavepos.eval.perplexity`) from the training length up
   to 16x it, on held-out standard-library files long enough for the longest window.
4. Print the table, write ``eval/perplexity.{json,csv,png}``, ``demo.json`` and a Hub-ready folder
   of the wavelet model (``hub/``, with its model card) under the output folder.

``--quick`` runs the same pipeline at toy sizes (the tests use it).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

METHOD_POSITIONS = {"rope": "rope", "wavelet": "long", "alibi": {"method": "alibi"}}
LABELS = {"rope": "RoPE", "wavelet": "wavelet (long)", "alibi": "ALiBi"}


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo; `DemoSettings.quick` for tests."""

    block_size: int = 64  # L_train
    steps: int = 600
    global_batch_size: int = 16
    lr: float = 3e-3
    vocab_size: int = 2048
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 384
    train_documents: int = 600
    heldout_documents: int = 60
    eval_documents: int = 16
    length_multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    methods: tuple[str, ...] = ("rope", "wavelet", "alibi")
    seed: int = 0
    threads: int = 2
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(block_size=16, steps=6, global_batch_size=4, vocab_size=300, hidden_size=32, layers=1, heads=2,
                   intermediate_size=64, train_documents=12, heldout_documents=30, eval_documents=3,
                   length_multiples=(1, 2, 4), methods=("rope", "wavelet"))

    @property
    def lengths(self) -> list[int]:
        return [self.block_size * m for m in self.length_multiples]


def _train_config(settings: DemoSettings, method: str, tokenizer_dir: Path, out: Path):
    from hf_wavepos.training import load_config

    model_overrides = {
        "hidden_size": settings.hidden_size, "num_hidden_layers": settings.layers,
        "num_attention_heads": settings.heads, "num_key_value_heads": settings.heads,
        "intermediate_size": settings.intermediate_size, "tie_word_embeddings": True,
    }
    overrides = [
        "model.architecture=llama", "model.size=tiny", f"model.tokenizer={tokenizer_dir}",
        f"model.config_overrides={json.dumps(model_overrides)}",
        f"model.position={json.dumps(METHOD_POSITIONS[method])}",
        "data.dataset=stdlib", f"data.validation_size={settings.heldout_documents}",
        f"data.max_documents={settings.train_documents}", f"data.block_size={settings.block_size}",
        f"train.seed={settings.seed}", f"train.global_batch_size={settings.global_batch_size}",
        f"train.per_device_batch_size={settings.global_batch_size}", f"train.max_steps={settings.steps}",
        f"optim.lr={settings.lr}", "optim.weight_decay=0.1", "optim.max_grad_norm=1.0",
        "schedule.name=cosine", f"schedule.warmup_steps={max(1, settings.steps // 20)}", "schedule.min_lr_ratio=0.1",
        f"checkpoint.every_steps={settings.steps}", "checkpoint.keep_last=1",
        "eval.max_blocks=32", "log.trackers=[]", f"log.every_steps={max(1, settings.steps // 10)}",
        f"log.run_name=demo_{method}", f"output_dir={out / 'models' / method}",
    ]
    return load_config(None, overrides)


def _tokenizer(settings: DemoSettings, out: Path):
    from hf_wavepos.data import load_text_splits
    from hf_wavepos.data.tokenizers import train_bpe_tokenizer

    splits = load_text_splits("stdlib", validation_size=settings.heldout_documents, seed=settings.seed,
                              max_documents=settings.train_documents)
    tokenizer = train_bpe_tokenizer(splits.train["text"], settings.vocab_size)
    tokenizer.save_pretrained(out / "tokenizer")
    held_out = list(splits.validation["text"])
    return tokenizer, held_out


def _long_documents(texts: list[str], tokenizer, min_tokens: int, count: int) -> list[str]:
    long = [t for t in texts if len(tokenizer(t).input_ids) >= min_tokens]
    if not long:
        raise ValueError(f"no held-out file has {min_tokens} tokens; lower the lengths or raise heldout_documents.")
    return long[:count]


def ratio_table(results: dict[str, list[dict]], block_size: int) -> dict[str, dict[str, float]]:
    """Perplexity at each length divided by the perplexity at the training length, per model."""
    table = {}
    for label, rows in results.items():
        by_length = {r["length"]: r["perplexity"] for r in rows}
        table[label] = {f"{n // block_size}x": by_length[n] / by_length[block_size] for n in sorted(by_length)}
    return table


def run_demo(out: Path, quick: bool = False, settings: DemoSettings | None = None) -> dict:
    """Run the demo (see the module docstring) and return its summary (also ``demo.json``)."""
    from hf_wavepos import __version__
    from hf_wavepos.eval.perplexity import perplexity_report
    from hf_wavepos.eval.report import write_perplexity
    from hf_wavepos.hub import assemble_folder
    from hf_wavepos.training import train
    from transformers import AutoModelForCausalLM

    settings = settings or (DemoSettings.quick() if quick else DemoSettings())
    torch.set_num_threads(settings.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    steps = len(settings.methods) + 3
    print(f"[1/{steps}] BPE tokenizer ({settings.vocab_size}) on the standard library source")
    tokenizer, held_out = _tokenizer(settings, out)
    trained = {}
    for i, method in enumerate(settings.methods, start=2):
        print(f"[{i}/{steps}] training {LABELS[method]}: L_train {settings.block_size}, {settings.steps} steps "
              f"x {settings.global_batch_size} blocks")
        t0 = time.time()
        result = train(_train_config(settings, method, out / "tokenizer", out))
        trained[method] = {"folder": result.final_model, "seconds": time.time() - t0,
                           "train_loss": result.train_loss, "val_loss": result.val_loss}
    print(f"[{steps - 1}/{steps}] full-sequence perplexity at {settings.lengths} tokens")
    texts = _long_documents(held_out, tokenizer, max(settings.lengths), settings.eval_documents)

    def models():
        for method in settings.methods:
            model = AutoModelForCausalLM.from_pretrained(trained[method]["folder"]).eval()
            yield LABELS[method], model, tokenizer

    report = perplexity_report(models(), texts, settings.lengths, mode="full",
                               source=f"stdlib held-out files (>= {max(settings.lengths)} tokens)")
    write_perplexity(report, out / "eval", train_length=settings.block_size)
    ratios = ratio_table(report["results"], settings.block_size)
    print(f"[{steps}/{steps}] Hub-ready folder of the wavelet model")
    hub = assemble_folder(trained["wavelet"]["folder"], out / "hub" / "wavepos-demo-llama", eval_run=out / "eval",
                          label=LABELS["wavelet"], repo_id="wavepos-demo-llama", overwrite=True,
                          datasets=["python-stdlib"],
                          recipe=f"Trained from scratch by `wavepos demo` at L_train = {settings.block_size} "
                                 f"({settings.steps} steps x {settings.global_batch_size} blocks).")
    summary = {
        "settings": asdict(settings), "lengths": settings.lengths, "perplexity": report["results"],
        "ratio_to_train_length": ratios, "training": trained, "hub_folder": str(hub),
        "seconds": time.time() - started, "hf_wavepos": __version__, "torch": torch.__version__,
        "device": f"CPU ({platform.machine()}), {settings.threads} threads",
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_table(report["results"], settings.block_size))
    print(f"\nwrote {out}/: demo.json, eval/perplexity.{{json,csv,png}}, models/, hub/ "
          f"({summary['seconds']:.0f} s)")
    return summary


def format_table(results: dict[str, list[dict]], block_size: int) -> str:
    """Perplexity by length (and the ratio to the training length) as a text table."""
    labels = list(results)
    lengths = sorted({r["length"] for rows in results.values() for r in rows})
    ratios = ratio_table(results, block_size)
    lines = ["tokens".rjust(8) + "".join(label.rjust(24) for label in labels)]
    for n in lengths:
        cells = []
        for label in labels:
            ppl = next(r["perplexity"] for r in results[label] if r["length"] == n)
            cells.append(f"{ppl:9.2f} ({ratios[label][f'{n // block_size}x']:.2f}x)".rjust(24))
        lines.append(f"{n:>6} ({n // block_size}x)"[:8].rjust(8) + "".join(cells))
    return "\n".join(lines)
