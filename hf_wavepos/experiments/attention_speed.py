"""CPU benchmark of the wavelet attention against SDPA: training (forward + backward) and decoding.

Every figure is a ratio against ``F.scaled_dot_product_attention`` (no positional term) measured
in the same process: the methods alternate within each repeat, and the ratio is of medians (the
JSON also keeps the ratio of minima, the least disturbed repeat of each method).

    training   B=1, H heads, L queries and keys, D, float32, forward + backward:
                 sdpa        SDPA(is_causal=True)
                 dense_bias  the paper's approach: q . p scattered into an L x L additive mask, then SDPA
                 chunked     hf_wavepos's CPU backend
    decode     one query over a KV cache of --decode-length keys (no grad): sdpa vs chunked

``--under-load`` repeats the sdpa and chunked measurements while one busy process (a Python
spin loop started and stopped here) is pinned to one of the cores, and reports
``ratio_under_load / ratio_quiet``. The JSON names the CPU model and flags, threads, torch, and
the load average (other processes on the machine) before and after each part: on a shared
machine the "quiet" part is only as quiet as that load. Peak memory is the growth of the peak RSS
(Linux VmHWM, reset just before) of one forward + backward in a fresh subprocess.

    python bench/attention_cpu.py                      # L=2048, H=8, D=64, 2 threads, decode 16k
    python bench/attention_cpu.py --under-load         # + the same under one busy core
    python bench/attention_cpu.py --length 4096 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from hf_wavepos.attention import chunked_attention
from hf_wavepos.attention.chunked import auto_chunk_size
from hf_wavepos.basis import wavelet_table
from hf_wavepos.config import WavePosConfig
from hf_wavepos.machine import cpu_record, cpu_slug

ATTENTION_PATHS = ("sdpa", "dense_bias", "chunked")
UNDER_LOAD_PATHS = ("sdpa", "chunked")


def dense_bias_attention(q, k, v, table):
    """The paper's implementation: materialise scaling * q_m . p[m - n] as an (B, H, L, L) mask."""
    L, D = q.shape[-2], q.shape[-1]
    m = torch.arange(L)
    distance = (m[:, None] - m[None, :]).clamp(min=0)
    bias = (q @ table[:L].T).gather(-1, distance.expand(*q.shape[:2], L, L)) / D**0.5
    bias = bias.masked_fill(m[None, :] > m[:, None], float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def make_step(method: str, args, preset: str) -> Callable[[], None]:
    """One forward + backward of ``method`` at the benchmark's training shape."""
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


def make_decode_step(method: str, args, preset: str) -> Callable[[], None]:
    """One query (position Lk - 1) over a cache of ``args.decode_length`` keys, no grad."""
    gen = torch.Generator().manual_seed(1)
    Lk, D, H, Hkv = args.decode_length, args.head_dim, args.heads, args.kv_heads or args.heads
    q = torch.randn(1, H, 1, D, generator=gen)
    k, v = (torch.randn(1, Hkv, Lk, D, generator=gen) for _ in range(2))
    table = wavelet_table(WavePosConfig.from_preset(preset), D, Lk)

    def step():
        with torch.no_grad():
            if method == "sdpa":
                F.scaled_dot_product_attention(q, k, v, enable_gqa=Hkv != H)
            else:
                chunked_attention(q, k, v, table, q_offset=Lk - 1)

    return step


def time_interleaved(steps: dict[str, Callable[[], None]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per call of every step: one warm-up each (unless ``warmup`` is false), then
    ``repeats`` rounds of all steps in turn, so that changes in machine load hit every method alike."""
    for step in steps.values() if warmup else ():
        step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return times


def summarise(times: dict[str, list[float]]) -> dict:
    """Medians, minima and the ratios of both against ``sdpa``."""
    median = {m: statistics.median(t) for m, t in times.items()}
    least = {m: min(t) for m, t in times.items()}
    return {
        "ratio_vs_sdpa": {m: median[m] / median["sdpa"] for m in times},
        "ratio_vs_sdpa_of_minima": {m: least[m] / least["sdpa"] for m in times},
        "median_seconds_this_machine": median,
        "min_seconds_this_machine": least,
    }


def measure(args, presets: list[str], paths: tuple[str, ...]) -> dict:
    """Training and decode timings for every preset, each with the load average around it."""
    results = {}
    for preset in presets:
        load_before = os.getloadavg()[0]
        training = summarise(time_interleaved({m: make_step(m, args, preset) for m in paths}, args.repeats))
        decode = summarise(time_interleaved(
            {m: make_decode_step(m, args, preset) for m in UNDER_LOAD_PATHS}, args.decode_repeats))
        results[preset] = {"training": training, "decode": decode,
                           "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]}}
        print(f"{preset:>10}: training chunked {training['ratio_vs_sdpa']['chunked']:.2f}x SDPA"
              + (f", dense-bias {training['ratio_vs_sdpa']['dense_bias']:.2f}x" if "dense_bias" in paths else "")
              + f"; decode {decode['ratio_vs_sdpa']['chunked']:.2f}x SDPA "
              f"(load {load_before:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
    return results


@contextlib.contextmanager
def busy_core() -> Iterator[int]:
    """Run one CPU-bound process (a Python spin loop) pinned to the last usable core; yield the core.

    Raises:
        RuntimeError: if this process may use fewer than two cores (the load would take them all).
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise RuntimeError(f"--under-load needs at least 2 usable cores, this process has {len(cores)}.")
    core = cores[-1]
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    try:
        time.sleep(0.5)  # let it start spinning
        yield core
    finally:
        spin.kill()
        spin.wait()


def under_load_growth(quiet: dict, loaded: dict) -> dict:
    """ratio_under_load / ratio_quiet of chunked, per preset and part (training, decode)."""
    return {
        preset: {part: loaded[preset][part]["ratio_vs_sdpa"]["chunked"] / quiet[preset][part]["ratio_vs_sdpa"]["chunked"]
                 for part in ("training", "decode")}
        for preset in quiet
    }


def peak_memory_mb(method: str, args, preset: str) -> float:
    """Peak RSS growth (MiB) of one forward + backward, in a fresh subprocess."""
    cmd = [sys.executable, "-m", "hf_wavepos.experiments.attention_speed", "--measure-memory", method,
           "--preset-one", preset, "--length", str(args.length), "--heads", str(args.heads),
           "--head-dim", str(args.head_dim), "--threads", str(args.threads)]
    if args.chunk_size is not None:
        cmd += ["--chunk-size", str(args.chunk_size)]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_memory_here(args) -> None:
    step = make_step(args.measure_memory, args, args.preset_one)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    step()
    print((_status_kib("VmHWM") - before) / 1024)


def parse_args(argv=None) -> argparse.Namespace:
    """The benchmark's options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=None, help="decode: key/value heads (default: --heads)")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--decode-length", type=int, default=16384)
    parser.add_argument("--decode-repeats", type=int, default=40)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: the backend's adaptive size")
    parser.add_argument("--presets", nargs="+", default=["oka2025", "long"])
    parser.add_argument("--under-load", action="store_true", help="also measure with one core kept busy")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--out", default=None, help="default: bench/results/attention_cpu_<cpu>.json")
    parser.add_argument("--measure-memory", choices=ATTENTION_PATHS, help=argparse.SUPPRESS)
    parser.add_argument("--preset-one", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_cpu_benchmark(args, argv=None) -> dict:
    """Run every part the options ask for; return the JSON-ready report."""
    machine = cpu_record()
    quiet = measure(args, args.presets, ATTENTION_PATHS)
    report = {
        "benchmark": "wavelet attention on CPU: forward+backward and decoding, ratios against SDPA in the same run",
        "command": "python bench/attention_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine,
        "training_shape": {"batch": 1, "heads": args.heads, "length": args.length, "head_dim": args.head_dim,
                           "dtype": "float32", "repeats": args.repeats,
                           "chunk_size": args.chunk_size or auto_chunk_size(1, args.heads, args.length, args.length)},
        "decode_shape": {"batch": 1, "heads": args.heads, "kv_heads": args.kv_heads or args.heads, "queries": 1,
                         "cache_length": args.decode_length, "head_dim": args.head_dim, "dtype": "float32",
                         "repeats": args.decode_repeats},
        "quiet": quiet,
    }
    if not args.no_memory:
        for preset in args.presets:
            quiet[preset]["training"]["peak_rss_growth_mib"] = {m: peak_memory_mb(m, args, preset) for m in ATTENTION_PATHS}
    if args.under_load:
        with busy_core() as core:
            print(f"under load: one busy process pinned to core {core}", flush=True)
            loaded = measure(args, args.presets, UNDER_LOAD_PATHS)
        report["under_load"] = {"busy_core": core, "results": loaded,
                                "ratio_under_load_over_quiet": under_load_growth(quiet, loaded)}
    report["load_average_1min_at_end"] = os.getloadavg()[0]
    return report


def main(argv=None) -> None:
    """Command-line entry: run the benchmark and write its JSON report."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure_memory:
        return _measure_memory_here(args)
    report = run_cpu_benchmark(args, argv)
    out = Path(args.out or f"bench/results/attention_cpu_{cpu_slug()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
