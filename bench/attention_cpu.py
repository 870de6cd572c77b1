"""CPU attention benchmark. See hf_wavepos/experiments/attention_speed.py for what it measures.

    python bench/attention_cpu.py            # writes bench/results/attention_cpu.json
"""

from hf_wavepos.experiments.attention_speed import main

if __name__ == "__main__":
    main()
