"""CPU benchmark of the chunked wavelet attention against SDPA and the dense-bias approach.

Forward + backward at one length, as ratios measured in one run (interleaved repeats, median):

    sdpa        F.scaled_dot_product_attention(is_causal=True), no positional term (the baseline)
    dense_bias  the paper's approach: q . p scattered into an L x L additive mask, then SDPA
    chunked     hf_wavepos's CPU backend (query chunks, recomputing backward)

Peak memory is the growth of the process's peak RSS (Linux VmHWM, reset just before) during one
forward + backward, in a fresh subprocess per (method, preset) so earlier runs do not hide it.

    python bench/attention_cpu.py                       # defaults: L=2048, H=8, D=64, 2 threads
    python bench/attention_cpu.py --length 4096 --out /tmp/x.json

(bench/attention_cpu.py runs `main` of this module; `wavepos demo` uses `run_cpu_benchmark`.)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_wavepos.attention import chunked_attention
from hf_wavepos.basis import wavelet_table
from hf_wavepos.config import WavePosConfig
from hf_wavepos.machine import device_name

ATTENTION_PATHS = ("sdpa", "dense_bias", "chunked")


def dense_bias_attention(q, k, v, table):
    """The paper's implementation: materialise scaling * q_m . p[m - n] as an (B, H, L, L) mask."""
    L, D = q.shape[-2], q.shape[-1]
    m = torch.arange(L)
    distance = (m[:, None] - m[None, :]).clamp(min=0)
    bias = (q @ table[:L].T).gather(-1, distance.expand(*q.shape[:2], L, L)) / D**0.5
    bias = bias.masked_fill(m[None, :] > m[:, None], float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def make_step(method, args, preset):
    gen = torch.Generator().manual_seed(0)
    shape = (1, args.heads, args.length, args.head_dim)
    q, k, v = (torch.randn(shape, generator=gen).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, generator=gen)
    table = wavelet_table(WavePosConfig.from_preset(preset), args.head_dim, args.length)

    def step():
        if method == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif method == "dense_bias":
            out = dense_bias_attention(q, k, v, table)
        else:
            out = chunked_attention(q, k, v, table, chunk_size=args.chunk_size)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    return step


def peak_memory_mb(method, args, preset):
    """Peak RSS growth (MiB) of one forward + backward, in a fresh subprocess."""
    cmd = [sys.executable, "-m", "hf_wavepos.experiments.attention_speed", "--measure-memory", method, "--preset-one", preset,
           "--length", str(args.length), "--heads", str(args.heads), "--head-dim", str(args.head_dim),
           "--threads", str(args.threads), "--chunk-size", str(args.chunk_size)]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_memory_here(args):
    step = make_step(args.measure_memory, args, args.preset_one)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    step()
    print((_status_kib("VmHWM") - before) / 1024)


def main(argv=None):
    """Command-line entry: run the benchmark and write its JSON report."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        return _measure_memory_here(args)

    report = run_cpu_benchmark(args, argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def parse_args(argv=None):
    """The benchmark's options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--presets", nargs="+", default=["oka2025", "long"])
    parser.add_argument("--out", default="bench/results/attention_cpu.json")
    parser.add_argument("--measure-memory", choices=ATTENTION_PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--preset-one", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_cpu_benchmark(args, argv=None, progress=None):
    """Time and measure every method for every preset; return the JSON-ready report."""
    results = {}
    for preset in args.presets:
        steps = {m: make_step(m, args, preset) for m in ATTENTION_PATHS}
        times = {m: [] for m in ATTENTION_PATHS}
        for step in steps.values():
            step()  # warm-up
        for _ in range(args.repeats):  # interleaved, so machine noise hits every method alike
            for method, step in steps.items():
                t0 = time.perf_counter()
                step()
                times[method].append(time.perf_counter() - t0)
        median = {m: statistics.median(t) for m, t in times.items()}
        memory = {m: peak_memory_mb(m, args, preset) for m in ATTENTION_PATHS}
        results[preset] = {
            "time_ratio_vs_sdpa": {m: median[m] / median["sdpa"] for m in ATTENTION_PATHS},
            "peak_rss_growth_mib": memory,
            "median_seconds_this_machine": median,
        }
        r = results[preset]["time_ratio_vs_sdpa"]
        if progress is not None:
            progress.update(1)
        print(f"{preset:>10}: chunked {r['chunked']:.2f}x SDPA, dense-bias {r['dense_bias']:.2f}x SDPA; "
              f"peak RSS growth MiB: " + ", ".join(f"{m} {memory[m]:.0f}" for m in ATTENTION_PATHS))

    report = {
        "benchmark": "wavelet attention forward+backward on CPU (ratios against SDPA in the same run)",
        "command": "python bench/attention_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "shape": {"batch": 1, "heads": args.heads, "length": args.length, "head_dim": args.head_dim,
                  "dtype": "float32"},
        "threads": args.threads, "chunk_size": args.chunk_size, "repeats": args.repeats,
        "device": device_name("cpu"), "torch": torch.__version__, "python": platform.python_version(),
        "results": results,
    }
    return report


if __name__ == "__main__":
    main()
