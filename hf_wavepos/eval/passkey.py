"""Passkey retrieval (Mohtashami & Jaggi, 2023): accuracy by context length and key depth.

A random number (the pass key) is stated once inside a long haystack; the prompt ends with
"What is the pass key? The pass key is" and the model continues greedily. A sample is correct
exactly when the first number in the continuation equals the key (`scoring.retrieval_exact`).
The haystack is real text by default (`haystack.haystack_sentences`); ``haystack="classic"``
gives the original repeated filler for comparison with published numbers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from tqdm.auto import tqdm

from hf_wavepos.eval.generation import greedy_generate
from hf_wavepos.eval.haystack import Haystack, Prompt, haystack_sentences
from hf_wavepos.eval.scoring import mean, retrieval_exact

INTRO = (
    "There is an important piece of information hidden inside a lot of irrelevant text. "
    "Find it and memorise it. I will quiz you about it afterwards."
)
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


@dataclass
class PasskeySample:
    """One passkey prompt and its answer."""

    prompt: Prompt
    key: str
    length: int
    depth: float


def random_key(rng: random.Random, digits: int = 5) -> str:
    """A ``digits``-digit number with a non-zero first digit, as a string."""
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def make_passkey_sample(haystack: Haystack, context_length: int, depth: float, key: str, offset: int = 0) -> PasskeySample:
    """Build one passkey prompt of at most ``context_length`` tokens with the key at ``depth``.

    Args:
        haystack: the tokenised filler text.
        context_length: the most tokens of the prompt.
        depth: where the key sentence goes, 0 (start of the filler) .. 1 (end).
        key: the pass key (digits).
        offset: first haystack sentence (varies the text between samples).
    """
    if not key.isdigit():
        raise ValueError(f"key={key!r} must be digits only")
    prompt = haystack.build_prompt(context_length, [(depth, NEEDLE.format(key=key))], INTRO, QUESTION, offset)
    return PasskeySample(prompt, key, context_length, depth)


def run_passkey(
    model,
    tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    num_samples: int = 5,
    haystack: str | Sequence[str] = "debian-faq",
    seed: int = 0,
    key_digits: int = 5,
    max_new_tokens: int | None = None,
    show_progress: bool = True,
    label: str = "model",
) -> dict:
    """Passkey accuracy for every (length, depth) cell.

    Args:
        model, tokenizer: a Hugging Face causal LM and its tokenizer.
        lengths: prompt lengths in tokens.
        depths: key depths in [0, 1].
        num_samples: prompts per cell (different keys and haystack offsets).
        haystack: a haystack source name or a list of sentences.
        seed: makes keys and offsets reproducible.
        key_digits: digits of the key.
        max_new_tokens: generated tokens (default: the key's token count + 4).

    Returns:
        ``{"task": "passkey", "lengths", "depths", "accuracy": [[acc per length] per depth],
        "samples": [rows]}``; rows carry length, depth, actual depth, key, output, correct.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    sentences = haystack_sentences(haystack) if isinstance(haystack, str) else list(haystack)
    hay = Haystack(tokenizer, sentences)
    rng = random.Random(seed)
    rows = []
    cells = [(length, depth) for length in lengths for depth in depths]
    for length, depth in tqdm(cells, desc=f"passkey {label}", unit="cell", disable=not show_progress):
        for _ in range(num_samples):
            key = random_key(rng, key_digits)
            sample = make_passkey_sample(hay, length, depth, key, offset=rng.randrange(len(sentences)))
            new = max_new_tokens or len(hay.encode(" " + key)) + 4
            output = greedy_generate(model, tokenizer, sample.prompt.input_ids, new)
            rows.append({
                "length": length, "depth": depth, "actual_depth": round(sample.prompt.depths[0], 4),
                "prompt_tokens": len(sample.prompt.input_ids), "key": key, "output": output,
                "correct": retrieval_exact(output, key),
            })
    accuracy = [[mean(r["correct"] for r in rows if r["length"] == n and r["depth"] == d) for n in lengths] for d in depths]
    return {
        "task": "passkey", "lengths": list(lengths), "depths": list(depths), "num_samples": num_samples,
        "haystack": haystack if isinstance(haystack, str) else "custom", "accuracy": accuracy,
        "mean_accuracy": mean(r["correct"] for r in rows), "samples": rows,
    }

