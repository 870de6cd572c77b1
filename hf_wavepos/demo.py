"""``wavepos demo``: what a newcomer runs first (``make demo``).

Today it shows the foundation on this machine, with no network:

1. the wavelet table of every preset, described and plotted (``basis_<preset>.png``);
2. a numerical check of the CPU attention backend against the float64 reference on the
   embedded corpus' scale of lengths (odd length, grouped-query heads, forward and gradients);
3. the CPU attention benchmark (``attention_cpu.json``): the chunked backend's forward+backward
   time and peak memory against SDPA without positions and against the paper's dense-bias approach.

Training and the extrapolation comparison join it once the model integration lands.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from hf_wavepos.attention import chunked_attention, reference_attention
from hf_wavepos.basis import wavelet_support, wavelet_table
from hf_wavepos.config import PRESETS


def check_backend(length: int, head_dim: int = 32, seed: int = 0) -> dict[str, float]:
    """Max abs difference of the chunked backend vs the float64 reference (output and grads)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 4, length, head_dim, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, length, head_dim, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, length, head_dim, generator=gen, dtype=torch.float64, requires_grad=True)
    table = wavelet_table(PRESETS["oka2025"], head_dim, length, dtype=torch.float64)
    grad = torch.randn(1, 4, length, head_dim, generator=gen, dtype=torch.float64)
    diffs = {}
    outs = [fn(q, k, v, table) for fn in (reference_attention, chunked_attention)]
    grads = [torch.autograd.grad(o, (q, k, v), grad) for o in outs]
    diffs["out"] = (outs[0] - outs[1]).abs().max().item()
    for name, a, b in zip(("dq", "dk", "dv"), *grads):
        diffs[name] = (a - b).abs().max().item()
    return diffs


def run_demo(out: Path, quick: bool = False) -> dict:
    """Run the demo, write its files under ``out`` and return the summary (also ``demo.json``)."""
    from hf_wavepos.benchmark import parse_args, run_cpu_benchmark
    from hf_wavepos.plots import plot_basis

    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"basis": {}, "check": {}, "benchmark": None}
    head_dim = 64
    print(f"[1/3] wavelet tables (head_dim {head_dim})")
    for name, config in tqdm(PRESETS.items(), desc="basis plots"):
        path = plot_basis(config, head_dim, 512 if quick else 4096, out / f"basis_{name}.png")
        summary["basis"][name] = {"support_1e-6": wavelet_support(config, head_dim), "plot": path.name}
    length = 101 if quick else 1001
    print(f"[2/3] chunked backend vs float64 reference at L = {length}")
    summary["check"] = check_backend(length)
    print("      max |difference|: " + ", ".join(f"{k} {v:.1e}" for k, v in summary["check"].items()))
    bench_args = ["--length", "256" if quick else "2048", "--repeats", "1" if quick else "5",
                  "--out", str(out / "attention_cpu.json")]
    print(f"[3/3] CPU attention benchmark ({' '.join(bench_args[:2])})")
    args = parse_args(bench_args)
    torch.set_num_threads(args.threads)
    with tqdm(total=len(args.presets), desc="benchmark presets") as bar:
        report = run_cpu_benchmark(args, bench_args, progress=bar)
    (out / "attention_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    summary["benchmark"] = {p: r["time_ratio_vs_sdpa"] for p, r in report["results"].items()}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}/ (demo.json, attention_cpu.json, basis_*.png)")
    return summary
