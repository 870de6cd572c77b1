"""Continued pretraining of a stock RoPE checkpoint converted to wavelet positions at a target length.

    accelerate launch [--config_file recipes/accelerate/<launch>.yaml] recipes/continue_pretrain.py \\
        recipes/configs/<experiment>.yaml [section.key=value ...] [--resume_from_checkpoint latest]

The loop, data pipeline and checkpointing live in hf_wavepos.training (shared by every recipe).
"""

from hf_wavepos.training import run_recipe

if __name__ == "__main__":
    run_recipe("continue")
