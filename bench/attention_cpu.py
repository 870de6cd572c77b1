"""CPU attention benchmark. See hf_wavepos/experiments/attention_speed.py for what it measures.

    python bench/attention_cpu.py               # writes bench/results/attention_cpu_<cpu>.json
    python bench/attention_cpu.py --under-load  # + the same with one core kept busy
"""

from hf_wavepos.experiments.attention_speed import main

if __name__ == "__main__":
    main()
