"""Shared helpers for the tests: a tiny BPE tokenizer trained here and tiny random causal LMs.

Nothing comes from the Hub: the tokenizer is trained on a few standard-library files and the
Debian FAQ chapters shipped with the package; the models are built from configs.
"""

import os
import sysconfig
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def train_tokenizer(vocab_size: int = 1000):
    """A byte-level BPE tokenizer (transformers fast tokenizer) with ``<eos>`` as EOS and pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_wavepos.eval.datasets_offline import debian_faq_chapters

    texts = [(STDLIB / name).read_text() for name in ("argparse.py", "textwrap.py", "string.py")]
    texts += [c["text"] for c in debian_faq_chapters()[:4]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def tiny_llama(vocab_size: int, seed: int = 0, max_positions: int = 4096):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=max_positions,
                         eos_token_id=0, pad_token_id=0, bos_token_id=None)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(vocab_size: int, seed: int = 1, max_positions: int = 2048):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=max_positions,
                        eos_token_id=0, bos_token_id=0, pad_token_id=0)
    return GPT2LMHeadModel(config).eval()
