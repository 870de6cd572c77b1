"""CPU speed and peak memory of a SmolLM2-135M-shaped Llama: wavepos against the stock RoPE model.

The model is built from its configuration (30 layers, hidden 576, 9 query / 3 key-value heads
of 64, intermediate 1536, vocabulary 49152, tied embeddings; random weights: speed does not
depend on them). For every length it measures, in one process with one thread count, the
methods alternating within each repeat (ratio of medians):

    training  one step: forward, loss and backward (gradients of every weight)
    scoring   one full-sequence pass under inference mode: the logits of every position and
              the negative log-likelihood, as `hf_wavepos.eval.perplexity` scores a window

``stock`` is the Llama with RoPE and SDPA, ``wavepos_<preset>`` the same weights converted with
`hf_wavepos.apply_wavepos` (CPU backend: ``chunked``). Peak memory is the growth of the peak
RSS (Linux VmHWM, reset just before) during one step, in a fresh subprocess per measurement.

    python bench/model_cpu.py --quick          # 4 layers, a few minutes
    python bench/model_cpu.py                  # the full 30 layers
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_wavepos.experiments.attention_speed import time_interleaved
from hf_wavepos.machine import cpu_record, cpu_slug
from hf_wavepos.models.registry import apply_wavepos

SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True, attention_dropout=0.0,
)
MODES = ("training", "scoring")


def build_model(name: str, layers: int, seed: int = 0) -> torch.nn.Module:
    """``stock`` or ``wavepos_<preset>``: the SmolLM2-135M shape with ``layers`` layers, weights
    drawn from ``seed`` (so every subprocess builds the same model)."""
    torch.manual_seed(seed)
    config = LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": layers}, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    if name != "stock":
        model = apply_wavepos(model, name.removeprefix("wavepos_"))
    return model


def make_step(model: torch.nn.Module, mode: str, length: int) -> Callable[[], None]:
    """One training step or one scoring pass of ``model`` on ``length`` random tokens."""
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(1))

    def training():
        model.train()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        model.zero_grad(set_to_none=True)

    def scoring():
        model.eval()
        with torch.inference_mode():
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1]  # (L - 1, V)
            targets = ids[0, 1:]
            for start in range(0, length - 1, 2048):  # the log-softmax in slices, as perplexity does
                part = torch.log_softmax(logits[start : start + 2048].float(), dim=-1)
                part.gather(-1, targets[start : start + 2048, None]).sum()

    return training if mode == "training" else scoring


def peak_memory_mib(name: str, mode: str, length: int, layers: int, threads: int) -> float:
    """Peak RSS growth (MiB) of one step of ``name``, measured in a fresh subprocess."""
    cmd = [sys.executable, "-m", "hf_wavepos.experiments.model_speed", "--measure-memory", name, mode, str(length),
           "--layers", str(layers), "--threads", str(threads)]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_memory_here(name: str, mode: str, length: int, layers: int) -> None:
    step = make_step(build_model(name, layers), mode, int(length))
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    step()
    print((_status_kib("VmHWM") - before) / 1024)


def _timing_entry(models: dict, mode: str, length: int, args) -> dict:
    """Interleaved timing of one (mode, length) for every model: ratios to stock and the medians."""
    load_before = os.getloadavg()[0]
    steps = {name: make_step(model, mode, length) for name, model in models.items()}
    times = time_interleaved(steps, args.repeats, warmup=not args.no_warmup)
    median = {n: statistics.median(t) for n, t in times.items()}
    return {
        "ratio_vs_stock": {n: median[n] / median["stock"] for n in models},
        "ratio_vs_stock_of_minima": {n: min(times[n]) / min(times["stock"]) for n in models},
        "median_seconds_this_machine": median,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
    }


def run_model_benchmark(args, argv=None) -> dict:
    """Time every (mode, length) for every model and measure peak memory; the JSON-ready report."""
    names = ["stock"] + [f"wavepos_{p}" for p in args.presets]
    models = {} if args.no_speed else {name: build_model(name, args.layers) for name in names}
    results: dict = {mode: {} for mode in MODES}
    for mode, lengths in (("training", args.train_lengths), ("scoring", args.score_lengths)):
        for length in lengths:
            entry = {} if args.no_speed else _timing_entry(models, mode, length, args)
            if not args.no_memory:
                memory = {n: peak_memory_mib(n, mode, length, args.layers, args.threads) for n in names}
                entry["peak_rss_growth_mib"] = memory
                entry["memory_ratio_vs_stock"] = {n: memory[n] / memory["stock"] for n in names}
            results[mode][str(length)] = entry
            parts = [f"{n} {entry['ratio_vs_stock'][n]:.2f}x" for n in names[1:] if "ratio_vs_stock" in entry]
            parts += [f"memory {n} {entry['memory_ratio_vs_stock'][n]:.2f}x" for n in names[1:]
                      if "memory_ratio_vs_stock" in entry]
            stock = f" (stock {entry['median_seconds_this_machine']['stock']:.2f} s)" if "ratio_vs_stock" in entry else ""
            print(f"{mode:>8} {length:>5}: " + ", ".join(parts) + stock, flush=True)
    return {
        "benchmark": "SmolLM2-135M-shaped Llama on CPU: training step and full-sequence scoring, wavepos vs stock RoPE",
        "command": "python bench/model_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": cpu_record(), "layers": args.layers, "repeats": args.repeats,
        "model": {**SMOLLM2_135M, "num_hidden_layers": args.layers}, "results": results,
        "load_average_1min_at_end": os.getloadavg()[0],
    }


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="4 layers, 1 repeat (a few minutes)")
    parser.add_argument("--presets", nargs="+", default=["long", "oka2025"])
    parser.add_argument("--train-lengths", type=int, nargs="*", default=[512, 2048])
    parser.add_argument("--score-lengths", type=int, nargs="*", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up call of every step")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-speed", action="store_true",
                        help="peak memory only (no timing): memory does not need a quiet machine")
    parser.add_argument("--out", default=None, help="default: bench/results/model_cpu_<cpu>[_quick].json")
    parser.add_argument("--measure-memory", nargs=3, metavar=("NAME", "MODE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.no_memory and args.no_speed:
        parser.error("--no-memory and --no-speed leave nothing to measure; drop one of them.")
    if args.quick:
        args.layers, args.repeats = 4, 1
    return args


def main(argv=None) -> None:
    """Command-line entry: run the benchmark and write its JSON report."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        return _measure_memory_here(*args.measure_memory, args.layers)
    report = run_model_benchmark(args, argv)
    out = Path(args.out or f"bench/results/model_cpu_{cpu_slug()}{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
