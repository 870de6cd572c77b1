"""Forward throughput of a tiny Llama on CPU: stock RoPE + SDPA vs its wavepos twin (chunked backend).

    python bench/model_forward_cpu.py     # writes bench/results/model_forward_cpu.json

Tiny model (hidden 64, 2 layers, 4 heads of 16), one forward of 4096 tokens, no grad, 2 threads,
interleaved repeats, median. A ratio in one run; absolute tokens/s are for this machine only.
"""

import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import hf_wavepos
from hf_wavepos.machine import device_name


def main(out="bench/results/model_forward_cpu.json", length=4096, repeats=5):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128)
    rope = LlamaForCausalLM(config).eval()
    models = {"rope_sdpa": rope}
    for preset in ("oka2025", "long"):
        models[f"wavepos_{preset}_chunked"] = hf_wavepos.apply_wavepos(copy.deepcopy(rope), preset).eval()
    ids = torch.randint(0, 2048, (1, length))
    times = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model(ids)
        for _ in range(repeats):
            for name, model in models.items():
                t0 = time.perf_counter()
                model(ids)
                times[name].append(time.perf_counter() - t0)
    tokens_per_s = {name: length / statistics.median(t) for name, t in times.items()}
    report = {
        "benchmark": "tiny Llama forward, 4096 tokens, no grad", "device": device_name("cpu"),
        "torch": torch.__version__, "tokens_per_second_this_machine": tokens_per_s,
        "ratio_vs_rope_sdpa": {name: v / tokens_per_s["rope_sdpa"] for name, v in tokens_per_s.items()},
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["ratio_vs_rope_sdpa"], indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:2])
