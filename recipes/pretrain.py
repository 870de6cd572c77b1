"""Pretraining from scratch with a chosen position method (RoPE, wavelet presets, ALiBi, NoPE).

    accelerate launch [--config_file recipes/accelerate/<launch>.yaml] recipes/pretrain.py \\
        recipes/configs/<experiment>.yaml [section.key=value ...] [--resume_from_checkpoint latest]

The loop, data pipeline and checkpointing live in hf_wavepos.training (shared by every recipe).
"""

from hf_wavepos.training import run_recipe

if __name__ == "__main__":
    run_recipe("pretrain")
