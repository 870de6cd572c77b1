"""Greedy generation from token ids, the one decoding rule of the retrieval and long-document tasks."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import GenerationConfig

from hf_wavepos.eval.perplexity import model_device


@torch.inference_mode()
def greedy_generate(model, tokenizer, input_ids: Sequence[int], max_new_tokens: int) -> str:
    """Greedy continuation of one prompt, decoded without special tokens.

    Args:
        model: a Hugging Face causal LM.
        tokenizer: its tokenizer (decodes the new tokens).
        input_ids: the prompt's token ids (length Lp).
        max_new_tokens: most tokens to generate (stops earlier at EOS).

    Returns:
        The generated text only (not the prompt).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    device = model_device(model)
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=device)  # (1, Lp)
    eos = getattr(model.generation_config, "eos_token_id", None) if hasattr(model, "generation_config") else None
    eos = eos if eos is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if isinstance(eos, int) else 0)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=pad)
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)
