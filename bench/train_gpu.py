"""Training throughput and peak memory of the ~125M recipe at L = 4096 on one GPU.

Runs ``recipes/pretrain.py`` with ``recipes/configs/llama_125m_wavelet_4k.yaml`` for a few steps
per position method (each in its own process, so peak memory is per run), then writes one JSON
with the device named:

    python bench/train_gpu.py                                   # wavelet (oka2025-4k) and RoPE
    python bench/train_gpu.py --positions oka2025-4k long rope alibi --steps 40
    python bench/train_gpu.py --cpu-smoke --out /tmp/train_smoke.json   # tiny config on CPU (checks the script)

Output (default ``bench/results/train_gpu.json``): for each method, tokens/s over the steps after
the first (all processes), peak GPU memory (``torch.cuda.max_memory_allocated``), final training
loss, and the settings (block size, global / per-device batch, precision).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(config: Path, position: str, steps: int, out_dir: Path, extra: list[str]) -> dict:
    """Train ``steps`` steps of ``config`` with ``model.position=position``; return its summary."""
    run_dir = out_dir / position.replace("/", "_")
    cmd = [
        sys.executable, str(ROOT / "recipes" / "pretrain.py"), str(config), f"model.position={position}",
        f"train.max_steps={steps}", "checkpoint.every_steps=null", "eval.every_steps=null", "eval.max_blocks=8",
        "log.trackers=[]", "log.every_steps=1", f"output_dir={run_dir}", *extra,
    ]
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    summary = json.loads((run_dir / "train_summary.json").read_text())
    summary["position"] = position
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "configs" / "llama_125m_wavelet_4k.yaml"))
    parser.add_argument("--positions", nargs="+", default=["oka2025-4k", "rope"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-documents", type=int, default=400, help="stdlib files to tokenise (enough blocks)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_gpu.json"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench_train"), help="run folders")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny config on CPU, 3 steps (tests the script)")
    args = parser.parse_args(argv)

    import torch
    import transformers

    extra = [f"data.max_documents={args.max_documents}"]
    config, steps, positions = Path(args.config), args.steps, args.positions
    if args.cpu_smoke:
        config, steps, positions, extra = ROOT / "recipes" / "configs" / "tiny_cpu.yaml", 3, ["oka2025", "rope"], []
    elif not torch.cuda.is_available():
        parser.error("no CUDA GPU: this benchmark measures GPU training (use --cpu-smoke to check the script).")
    runs = []
    for position in positions:
        runs.append(run_one(config, position, steps, Path(args.work), extra))
        if len(runs) == 1:  # the later runs reuse the first run's tokenizer instead of training it again
            extra = [*extra, f"model.tokenizer={Path(args.work) / positions[0].replace('/', '_') / 'tokenizer'}"]
    result = {
        "benchmark": "training throughput and peak memory, recipes/pretrain.py",
        "device": runs[0]["device"],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else str(config),
        "steps": steps,
        "runs": [
            {k: r.get(k) for k in ("position", "tokens_per_second", "peak_memory_gib", "train_loss", "block_size",
                                    "global_batch_size", "accumulation_steps", "processes", "mixed_precision",
                                    "parameters", "distributed_type")}
            for r in runs
        ],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in result["runs"]:
        mem = f"{r['peak_memory_gib']:.1f} GiB" if r["peak_memory_gib"] is not None else "n/a"
        print(f"{r['position']:>12}: {r['tokens_per_second'] or 0:,.0f} tokens/s, peak {mem}, loss {r['train_loss']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
