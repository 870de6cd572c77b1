"""The retrieval benchmark (``wavepos bench retrieval``): does a position method let a model find a
pass key beyond its training length?

The paper argues that ALiBi restricts the receptive field (its distance penalty hides far tokens)
while wavelets do not. This benchmark tests the claim directly. Every method trains the same
Llama-style model with the project's one training loop on the same rows: corpus blocks of the
Python standard library mixed with code passkey samples of L_train tokens
(`hf_wavepos.eval.code_passkey`: ``pass_key = $<5 digits>`` hidden in real code, then
``# recall:`` / ``pass_key = $`` and the key). Each model is then asked for the key in samples of
1x, 2x, 4x, 8x and 16x L_train whose haystacks come from held-out files, with needle depths spread
evenly from the start of the window to its end (the same samples for every method). A sample counts
when greedy decoding would emit the key's tokens exactly.

Outputs under ``out``: ``retrieval.json`` (settings, device, versions, accuracy by length and by
depth quarter, per-sample rows), ``retrieval.csv``, ``retrieval.png``, the tokenizer, the packed
training rows (``data/``) and the trained models (``models/``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_wavepos.experiments.extrapolation import ExtrapolationConfig, prepare_corpus, run_record, train_config


@dataclass(frozen=True)
class RetrievalConfig(ExtrapolationConfig):
    """`ExtrapolationConfig` (model, data, budget, methods, lengths) plus the passkey mix."""

    methods: tuple[str, ...] = ("nope", "rope", "alibi", "oka2025", "long")
    passkey_fraction: float = 0.5  # share of training rows that are passkey samples
    key_digits: int = 5
    samples_per_length: int = 64
    eval_batch_size: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.passkey_fraction < 1:
            raise ValueError(f"passkey_fraction={self.passkey_fraction} must be in (0, 1) (a share of training rows).")
        if not isinstance(self.key_digits, int) or not 1 <= self.key_digits <= 18:
            raise ValueError(f"key_digits={self.key_digits!r} must be an integer from 1 to 18.")
        if not isinstance(self.samples_per_length, int) or self.samples_per_length < 1:
            raise ValueError(f"samples_per_length={self.samples_per_length!r} must be a positive integer.")


QUICK = RetrievalConfig(
    methods=("rope", "long"), block_size=48, steps=4, global_batch_size=4, vocab_size=300, hidden_size=32, layers=1,
    heads=2, intermediate_size=64, train_documents=12, heldout_documents=30, length_multiples=(1, 2),
    samples_per_length=4,
)
"""Toy sizes for tests (``--quick``)."""


def build_training_rows(
    config: RetrievalConfig, splits: Any, tokenizer: Any, folder: Path
) -> tuple[dict[str, int], np.ndarray]:
    """Pack the corpus, add passkey samples, save both splits as pre-packed blocks.

    Training rows: every L_train block of the training files, plus passkey samples (haystacks:
    windows of those files) that make up ``passkey_fraction`` of all rows. Held-out rows: blocks and passkey
    samples of the held-out files (for the loop's validation loss only).

    Returns:
        Row counts ``{"corpus_blocks", "passkey_rows", "validation_rows"}``, and the held-out
        files' tokens as one (T,) stream (the test's haystack source).
    """
    from hf_wavepos.data.blocks import save_packed_blocks
    from hf_wavepos.data.packing import BlockPacker, tokenize_documents
    from hf_wavepos.eval.code_passkey import passkey_rows

    rng = np.random.default_rng(config.seed)
    length = config.block_size
    out, counts, streams = {}, {}, {}
    for split, texts in (("train", splits.train["text"]), ("validation", splits.validation["text"])):
        documents = tokenize_documents(texts, tokenizer)
        ids, positions = BlockPacker(length).add(documents)
        if split == "validation":
            ids, positions = ids[:32], positions[:32]
        n_passkey = max(1, round(len(ids) * config.passkey_fraction / (1 - config.passkey_fraction)))
        stream = streams[split] = np.concatenate([np.asarray(d, dtype=np.int64) for d in documents])
        passkey = passkey_rows(stream, tokenizer, length, n_passkey, rng, key_digits=config.key_digits)
        out[split] = {
            "input_ids": np.concatenate([ids, passkey.input_ids]),
            "position_ids": np.concatenate([positions, np.broadcast_to(np.arange(length), passkey.input_ids.shape)]),
        }
        counts.update({"corpus_blocks": len(ids), "passkey_rows": n_passkey} if split == "train"
                      else {"validation_rows": len(ids) + n_passkey})
    save_packed_blocks(folder, out["train"], out["validation"],
                       description=f"stdlib blocks + code passkey samples ({config.passkey_fraction:.0%} of rows)")
    return counts, streams["validation"]


def evaluate_retrieval(models: dict[str, Path], tokenizer: Any, eval_stream: np.ndarray, config: RetrievalConfig) -> dict:
    """Passkey accuracy of each trained model at each length (same samples for every model).

    Returns:
        ``{"accuracy": {method: {length: acc}}, "accuracy_by_depth": {method: {length: [acc per
        depth quarter]}}, "samples": [rows]}``.
    """
    from transformers import AutoModelForCausalLM

    from hf_wavepos.eval.code_passkey import passkey_correct, passkey_rows

    count = config.samples_per_length
    depths = (np.arange(count) + 0.5) / count  # evenly from the window's start to its end
    samples = {n: passkey_rows(eval_stream, tokenizer, n, count, np.random.default_rng([config.seed, n]),
                               depths=depths, key_digits=config.key_digits) for n in config.lengths}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    accuracy, by_depth, rows = {}, {}, []
    for method, folder in models.items():
        model = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
        accuracy[method], by_depth[method] = {}, {}
        for n, batch in samples.items():
            correct = passkey_correct(model, batch, config.eval_batch_size, progress=f"passkey {method} @ {n}")
            accuracy[method][n] = float(correct.mean())
            quarter = np.minimum((batch.depth * 4).astype(int), 3)
            by_depth[method][n] = [float(correct[quarter == q].mean()) if np.any(quarter == q) else None for q in range(4)]
            rows += [{"method": method, "length": n, "depth": round(float(d), 4), "needle_distance": int(dist),
                      "key": key, "correct": bool(c)}
                     for d, dist, key, c in zip(batch.depth, batch.needle_distance, batch.keys, correct)]
        del model
    return {"accuracy": accuracy, "accuracy_by_depth": by_depth, "samples": rows}


def format_accuracy(accuracy: dict[str, dict[int, float]], block_size: int) -> str:
    """Accuracy by length (columns) for each method (rows), as a text table."""
    lengths = sorted({n for by in accuracy.values() for n in by})
    width = max(12, *(len(m) + 2 for m in accuracy))
    lines = ["method".ljust(width) + "".join(f"{n} ({n / block_size:g}x)".rjust(14) for n in lengths)]
    for method, by in accuracy.items():
        lines.append(method.ljust(width) + "".join(f"{by[n]:14.0%}" for n in lengths))
    return "\n".join(lines)


def run_retrieval(config: RetrievalConfig, out: str | Path) -> dict[str, Any]:
    """Train every method on corpus + passkey rows, measure passkey accuracy by length, write results.

    Returns:
        The summary also written to ``out/retrieval.json``.
    """
    from hf_wavepos.eval.plots import plot_accuracy_by_length
    from hf_wavepos.eval.report import write_csv
    from hf_wavepos.training import train

    out = Path(out)
    started = time.time()
    total = len(config.methods) + 3
    splits, tokenizer = prepare_corpus(config, out, f"[1/{total}]")
    print(f"[2/{total}] training rows: corpus blocks of {config.block_size} tokens and passkey samples "
          f"({config.passkey_fraction:.0%} of rows)", flush=True)
    counts, eval_stream = build_training_rows(config, splits, tokenizer, out / "data")
    folders = {}
    seconds = {}
    for i, method in enumerate(config.methods, start=3):
        print(f"[{i}/{total}] training {method}: L_train {config.block_size}, {config.steps} steps x "
              f"{config.global_batch_size} rows", flush=True)
        t0 = time.time()
        result = train(train_config(config, method, out / "tokenizer", out, blocks=out / "data"))
        folders[method], seconds[method] = result.final_model, time.time() - t0
    print(f"[{total}/{total}] passkey accuracy at {config.lengths} tokens, {config.samples_per_length} samples "
          "each, haystacks from held-out files", flush=True)
    results = evaluate_retrieval(folders, tokenizer, eval_stream, config)
    summary = {
        "benchmark": "passkey retrieval by length after training on corpus + passkey samples at L_train",
        **run_record(config),
        "training_rows": counts, "training_seconds": seconds,
        "accuracy": {m: {str(n): a for n, a in by.items()} for m, by in results["accuracy"].items()},
        "accuracy_by_depth_quarter": {m: {str(n): a for n, a in by.items()}
                                      for m, by in results["accuracy_by_depth"].items()},
        "seconds": time.time() - started,
    }
    (out / "retrieval.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_csv(results["samples"], out / "retrieval.csv")
    plot_accuracy_by_length(results["accuracy"], config.block_size, out / "retrieval.png",
                  f"passkey retrieval, trained at L_train = {config.block_size} ({config.steps} steps), "
                  f"{config.samples_per_length} samples per length")
    print(format_accuracy(results["accuracy"], config.block_size), flush=True)
    return summary
