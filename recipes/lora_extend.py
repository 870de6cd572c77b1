"""LoRA context extension (PEFT) of a converted checkpoint; LongLoRA's trainable embeddings and norms optional.

    accelerate launch [--config_file recipes/accelerate/<launch>.yaml] recipes/lora_extend.py \\
        recipes/configs/<experiment>.yaml [section.key=value ...] [--resume_from_checkpoint latest]

The loop, data pipeline and checkpointing live in hf_wavepos.training (shared by every recipe).
"""

from hf_wavepos.training import run_recipe

if __name__ == "__main__":
    run_recipe("lora")
