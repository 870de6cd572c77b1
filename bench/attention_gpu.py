"""GPU benchmark of the wavelet attention backends against PyTorch SDPA, all ratios measured in one run.

1. Attention forward + backward, B=1, H=16, D=128, bfloat16, L in {4096, 16384, 65536}: time and
   peak memory of each backend (``triton``, ``flex``) for the presets ``oka2025-4k`` and ``long``,
   against ``sdpa`` (PyTorch SDPA, flash backend, causal, no positional term) and ``sdpa_rope``
   (the same with RoPE applied to q and k inside the timed step).
2. Decoding: one new token over 32768 cached tokens, triton (split-K) vs SDPA.
3. Training tokens/s of a ~125M-parameter Llama (12 layers, d_model 768, 12 heads) at L = 4096:
   the RoPE + SDPA model vs the same weights converted with `apply_wavepos` (per preset).

Writes ``attention_gpu.json`` (device, versions, every number, the project's GPU speed and memory
targets and whether they are met: see `targets`) and ``attention_gpu.png`` into ``--out-dir`` (default ``bench/results``).

    python bench/attention_gpu.py                    # one H100/H200, ~8 minutes (mostly compiles)
    python bench/attention_gpu.py --lengths 4096 16384 --skip-training
    python bench/attention_gpu.py --cpu-smoke --out-dir /tmp/smoke   # tiny, CPU, Triton interpreter

``--cpu-smoke`` runs every part end to end at toy sizes on CPU (float32, the Triton interpreter,
no flex: PyTorch has no FlexAttention backward on CPU, no memory numbers): it checks the script,
not the kernels' speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PRESETS = ("oka2025-4k", "long")
BASELINES = ("sdpa", "sdpa_rope")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--flex-lengths", type=int, nargs="+", default=[4096, 16384],
                   help="flex compiles per shape (~1 min each): its lengths are limited by default")
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--backends", nargs="+", default=["triton", "flex"])
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--block", type=int, default=None, help="triton tile size (default: the kernels' own)")
    p.add_argument("--chunk", type=int, default=None, help="triton table chunk (default: the kernels' own)")
    p.add_argument("--decode-cache", type=int, default=32768)
    p.add_argument("--train-length", type=int, default=4096)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--cpu-smoke", action="store_true", help="toy sizes on CPU through the Triton interpreter")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.lengths, args.flex_lengths, args.heads, args.head_dim = [32], [], 1, 32
        args.repeats, args.decode_cache, args.train_length, args.train_batch, args.train_steps = 1, 64, 32, 1, 2
        args.backends = [b for b in args.backends if b != "flex"]
    return args


# ----------------------------------------------------------------------------------- timing
class Device:
    """Where the benchmark runs: dtype, synchronisation, timers and memory counters."""

    def __init__(self, cpu_smoke: bool):
        self.cuda = not cpu_smoke
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit("bench/attention_gpu.py needs a CUDA GPU (or --cpu-smoke for a CPU check).")
        self.torch_device = torch.device("cuda" if self.cuda else "cpu")
        self.dtype = torch.bfloat16 if self.cuda else torch.float32  # the interpreter has no bf16 dot

    def name(self) -> str:
        from hf_wavepos.machine import device_name

        return device_name(self.torch_device) + ("" if self.cuda else ", Triton interpreter")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def seconds(self, fn, repeats: int) -> list[float]:
        """Wall time of ``fn`` per call (CUDA events on GPU)."""
        times = []
        for _ in range(repeats):
            self.sync()
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return times

    def peak_mib(self, fn) -> float | None:
        """Peak memory allocated by one call of ``fn`` above what was allocated before (GPU only)."""
        if not self.cuda:
            return None
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        self.sync()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


def sdpa_context(dev: Device):
    if not dev.cuda:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def rope_tables(length: int, dim: int, dev: Device, theta: float = 10000.0):
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, device=dev.torch_device, dtype=torch.float32) / dim)
    angles = torch.outer(torch.arange(length, device=dev.torch_device, dtype=torch.float32), inv)
    angles = torch.cat([angles, angles], dim=-1)  # (L, D), rotate-half layout as in Llama
    return angles.cos().to(dev.dtype), angles.sin().to(dev.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# ------------------------------------------------------------------------- 1. attention
def attention_fn(method: str, preset: str | None, q, k, v, args, dev: Device):
    """A zero-argument forward for ``method`` on q, k, v (B, H, L, D)."""
    from hf_wavepos import WavePosConfig, wavelet_table

    L, D = q.shape[2], q.shape[3]
    if method == "sdpa":
        return lambda: _sdpa(q, k, v, dev)
    if method == "sdpa_rope":
        cos, sin = rope_tables(L, D, dev)
        return lambda: _sdpa(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, dev)
    table = wavelet_table(WavePosConfig.from_preset(preset), D, L, device=dev.torch_device, dtype=dev.dtype)
    if method == "triton":
        from hf_wavepos.attention.triton import triton_attention

        return lambda: triton_attention(q, k, v, table, block=args.block, chunk=args.chunk)
    if method == "flex":
        from hf_wavepos.attention.flex import flex_attention

        return lambda: flex_attention(q, k, v, table)
    from hf_wavepos import wavepos_attention

    return lambda: wavepos_attention(q, k, v, table, backend=method)


def _sdpa(q, k, v, dev):
    with sdpa_context(dev):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def measure_attention(method, preset, length, args, dev: Device) -> dict:
    """Median forward+backward seconds and peak MiB of one method at one length."""
    gen = torch.Generator(device=dev.torch_device).manual_seed(0)
    shape = (1, args.heads, length, args.head_dim)
    q, k, v = (torch.randn(shape, generator=gen, device=dev.torch_device, dtype=dev.dtype).requires_grad_()
               for _ in range(3))
    grad = torch.randn(shape, generator=gen, device=dev.torch_device, dtype=dev.dtype)
    forward = attention_fn(method, preset, q, k, v, args, dev)

    def step():
        for t in (q, k, v):
            t.grad = None
        forward().backward(grad)

    try:
        for _ in range(2 if dev.cuda else 0):  # warm-up: compiles kernels (triton, flex)
            step()
        times = dev.seconds(step, args.repeats)
        for t in (q, k, v):
            t.grad = None
        peak = dev.peak_mib(step)
    except Exception as error:  # a refusal (flex), out of memory, a compile error: recorded
        return {"error": f"{type(error).__name__}: {error}"}
    return {"seconds": statistics.median(times), "seconds_all": times, "peak_mib": peak}


def run_attention(args, dev: Device, progress, results: dict | None = None, on_item=lambda: None) -> dict:
    """Forward+backward time and memory of every (method, preset, length); fills ``results`` (and
    calls ``on_item`` after each measurement, so a caller can save partial results)."""
    results = {} if results is None else results
    plan = [(m, None, L) for L in args.lengths for m in BASELINES]
    for L in args.lengths:
        for preset in args.presets:
            for backend in args.backends:
                if backend != "flex" or L in args.flex_lengths:
                    plan.append((backend, preset, L))
    for method, preset, L in progress(plan, desc="attention fwd+bwd"):
        key = method if preset is None else f"{method}/{preset}"
        results.setdefault(str(L), {})[key] = measure_attention(method, preset, L, args, dev)
        on_item()
        if dev.cuda:
            torch.cuda.empty_cache()
    return results


# ---------------------------------------------------------------------------- 2. decoding
def run_decode(args, dev: Device) -> dict:
    """One new token over ``decode_cache`` cached tokens: triton's decoding kernel vs SDPA."""
    from hf_wavepos import WavePosConfig, wavelet_table
    from hf_wavepos.attention.triton import triton_attention

    n, H, D = args.decode_cache, args.heads, args.head_dim
    gen = torch.Generator(device=dev.torch_device).manual_seed(1)
    k, v = (torch.randn(1, H, n, D, generator=gen, device=dev.torch_device, dtype=dev.dtype) for _ in range(2))
    q = torch.randn(1, H, 1, D, generator=gen, device=dev.torch_device, dtype=dev.dtype)
    calls = 50 if dev.cuda else 1
    out = {}

    def timed(fn):
        with torch.no_grad():
            for _ in range(2 if dev.cuda else 0):  # warm-up / compile
                fn()
            per_batch = dev.seconds(lambda: [fn() for _ in range(calls)], max(3, args.repeats))
        return statistics.median(per_batch) / calls

    def sdpa():
        with sdpa_context(dev):
            return F.scaled_dot_product_attention(q, k, v)  # the last token sees the whole cache

    out["sdpa"] = {"seconds": timed(sdpa)}
    for preset in args.presets:
        table = wavelet_table(WavePosConfig.from_preset(preset), D, n, device=dev.torch_device, dtype=dev.dtype)
        try:
            out[f"triton/{preset}"] = {"seconds": timed(lambda: triton_attention(q, k, v, table, q_offset=n - 1))}
        except Exception as error:  # recorded, the run goes on
            out[f"triton/{preset}"] = {"error": f"{type(error).__name__}: {error}"}
    return out


# ---------------------------------------------------------------------------- 3. training
def llama_125m(args, dev: Device):
    from transformers import LlamaConfig, LlamaForCausalLM

    if dev.cuda:
        sizes = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, num_key_value_heads=12)
    else:
        sizes = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2)
    config = LlamaConfig(**sizes, max_position_embeddings=args.train_length, tie_word_embeddings=True,
                         attention_dropout=0.0, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(dev.torch_device)


def measure_training(model, args, dev: Device) -> dict:
    """Tokens per second of AdamW steps on random tokens (bf16 autocast on GPU)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.cuda)
    gen = torch.Generator(device=dev.torch_device).manual_seed(2)
    vocab = model.config.vocab_size
    batch = torch.randint(vocab, (args.train_batch, args.train_length), generator=gen, device=dev.torch_device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.cuda else contextlib.nullcontext()

    def step():
        with autocast:
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2 if dev.cuda else 1):
        step()
    times = dev.seconds(step, args.train_steps)
    tokens = args.train_batch * args.train_length
    result = {"tokens_per_second": tokens / statistics.median(times), "seconds_per_step": statistics.median(times)}
    result["peak_mib"] = dev.peak_mib(step)
    return result


def run_training(args, dev: Device, progress) -> dict:
    from hf_wavepos import apply_wavepos

    model = llama_125m(args, dev)
    state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    out = {"parameters_millions": sum(p.numel() for p in model.parameters()) / 1e6}
    with sdpa_context(dev):
        out["rope_sdpa"] = measure_training(model, args, dev)
    for preset in progress(args.presets, desc="training"):
        model.load_state_dict(state)
        apply_wavepos(model, preset)
        try:
            out[f"wavepos/{preset}"] = measure_training(model, args, dev)
        except Exception as error:  # recorded, the run goes on
            out[f"wavepos/{preset}"] = {"error": f"{type(error).__name__}: {error}"}
    return out


# ------------------------------------------------------------------------------ report
def targets(results: dict, args) -> dict:
    """The GPU targets (throughput vs SDPA at 16k, memory vs SDPA at 64k, memory growth with length,
    decoding and training speed): value, target, met (None when not measured)."""
    att, out = results.get("attention", {}), {}

    def seconds(L, key):
        return att.get(str(L), {}).get(key, {}).get("seconds")

    def peak(L, key):
        return att.get(str(L), {}).get(key, {}).get("peak_mib")

    for preset in args.presets:
        for backend in args.backends:
            key = f"{backend}/{preset}"
            base, ours = seconds(16384, "sdpa"), seconds(16384, key)
            ratio = base / ours if base and ours else None
            met = ratio is not None and ratio >= 0.6
            out[f"throughput_vs_sdpa_L16384/{key}"] = _target(ratio, ">= 0.6 (stretch 0.8)", met)
            base, ours = peak(65536, "sdpa"), peak(65536, key)
            ratio = ours / base if base and ours else None
            out[f"memory_vs_sdpa_L65536/{key}"] = _target(ratio, "<= 2", ratio is not None and ratio <= 2)
            lengths = [L for L in sorted(args.lengths) if peak(L, key)]
            if len(lengths) >= 2:  # exponent of peak ~ L^e between the shortest and longest length
                e = math.log(peak(lengths[-1], key) / peak(lengths[0], key)) / math.log(lengths[-1] / lengths[0])
                out[f"memory_growth_exponent/{key}"] = _target(e, "~1 (linear)", e <= 1.15)
    dec = results.get("decode", {})
    for preset in args.presets:
        if "seconds" in dec.get(f"triton/{preset}", {}):
            ratio = dec[f"triton/{preset}"]["seconds"] / dec["sdpa"]["seconds"]
            out[f"decode_time_vs_sdpa/triton/{preset}"] = _target(ratio, "<= 1.5", ratio <= 1.5)
    train = results.get("training", {})
    for preset in args.presets:
        ours = train.get(f"wavepos/{preset}", {}).get("tokens_per_second")
        base = train.get("rope_sdpa", {}).get("tokens_per_second")
        if ours and base:
            out[f"training_throughput_vs_rope/{preset}"] = _target(ours / base, ">= 0.85", ours / base >= 0.85)
    return out


def _target(value, goal, met):
    return {"value": value, "target": goal, "met": bool(met) if value is not None else None}


def plot(results: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    att = results["attention"]
    lengths = sorted(int(L) for L in att)
    keys = sorted({key for L in att for key in att[L]}, key=lambda k: (k not in BASELINES, k))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for key in keys:
        pts = [(L, att[str(L)][key]) for L in lengths if "seconds" in att[str(L)].get(key, {})]
        if pts:
            style = "--" if key in BASELINES else "-"
            axes[0].plot([L for L, _ in pts], [r["seconds"] * 1e3 for _, r in pts], style, marker="o", label=key)
            mem = [(L, r["peak_mib"]) for L, r in pts if r.get("peak_mib") is not None]
            if mem:
                axes[1].plot(*zip(*mem), style, marker="o", label=key)
    for ax, title, unit in ((axes[0], "forward+backward time", "ms"), (axes[1], "peak memory", "MiB")):
        ax.set(xscale="log", yscale="log", xlabel="sequence length L", ylabel=unit, title=title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    figures = targets(results, args)
    names = [n for n, t in figures.items() if t["value"] is not None and not n.startswith("memory_growth")]
    values = [figures[n]["value"] for n in names]
    colors = ["tab:green" if figures[n]["met"] else "tab:red" for n in names]
    axes[2].barh(range(len(names)), values, color=colors)
    axes[2].set_yticks(range(len(names)), [n.replace("_vs_", " / ") for n in names], fontsize=6)
    axes[2].axvline(1.0, color="k", lw=0.8)
    axes[2].set_title("GPU targets (green: target met)")
    fig.suptitle(f"wavelet attention, {results['device']}, H={args.heads}, D={args.head_dim}, {results['dtype']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before hf_wavepos.attention.triton defines its kernels
    from tqdm import tqdm

    dev = Device(args.cpu_smoke)
    progress = lambda items, desc: tqdm(items, desc=desc, file=sys.stderr)  # noqa: E731
    results = {
        "benchmark": "wavelet attention on one GPU; ratios from one run",
        "command": "python bench/attention_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": dev.name(),
        "dtype": str(dev.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "python": platform.python_version(),
        "shape": {"batch": 1, "heads": args.heads, "head_dim": args.head_dim, "lengths": args.lengths},
    }
    t0 = time.perf_counter()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    def save(finished: bool) -> None:  # after every section: a run cut short still leaves what it measured
        results["finished"] = finished
        results["wall_seconds"] = time.perf_counter() - t0
        (args.out_dir / "attention_gpu.json").write_text(json.dumps(results, indent=2) + "\n")

    results["attention"] = {}
    run_attention(args, dev, progress, results["attention"], on_item=lambda: save(False))
    results["decode"] = run_decode(args, dev)
    save(False)
    if not args.skip_training:
        results["training"] = run_training(args, dev, progress)
    results["targets"] = targets(results, args)
    save(True)
    plot(results, args, args.out_dir / "attention_gpu.png")
    for name, t in results["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        print(f"{name:60s} {value:>8s}  target {t['target']:<22s} {verdict}")
    print(f"wrote {args.out_dir / 'attention_gpu.json'} and .png in {results['wall_seconds']:.0f} s")
    return results


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
