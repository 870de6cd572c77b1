"""SmolLM2-135M-shaped Llama on CPU, wavepos vs stock RoPE: training step and full-sequence scoring
at 512 / 2048 / 8192 tokens, time and peak memory. See hf_wavepos/experiments/model_speed.py.

    python bench/model_cpu.py --quick     # 4 layers: bench/results/model_cpu_<cpu>_quick.json
    python bench/model_cpu.py             # 30 layers: bench/results/model_cpu_<cpu>.json
"""

from hf_wavepos.experiments.model_speed import main

if __name__ == "__main__":
    main()
