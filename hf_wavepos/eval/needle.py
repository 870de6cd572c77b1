"""Needle in a haystack: a depth x length heatmap scored by exact match (no model-as-judge).

Needles are key-value facts ("The special magic number for Lisbon is 4837201.") in real text;
the question asks for the value and the answer is scored exactly on the numbers the model writes.

Variants:

- ``"single"``: one needle at the cell's depth; correct when the first number is the value.
- ``"multi"``: ``num_needles`` needles with different keys, the first at the cell's depth and the
  rest evenly spaced from there to the end (as in multi-needle haystack tests); the question
  asks for all values; the score is the fraction of values that appear among the numbers written.
- ``"distractor"``: the target needle at the cell's depth plus ``num_needles - 1`` needles for
  other keys at random depths; correct only when the first number is the target's value.
"""

from __future__ import annotations

import random
from typing import Sequence

from tqdm.auto import tqdm

from hf_wavepos.eval.generation import greedy_generate
from hf_wavepos.eval.haystack import Haystack, haystack_sentences
from hf_wavepos.eval.scoring import mean, numbers_in, retrieval_exact

VARIANTS = ("single", "multi", "distractor")

KEYS = (
    "Lisbon", "Nairobi", "Oslo", "Lima", "Hanoi", "Quito", "Dakar", "Tbilisi", "Manila", "Accra",
    "Bogota", "Helsinki", "Kampala", "Riga", "Santiago", "Tunis", "Vienna", "Yerevan", "Zagreb", "Muscat",
)
INTRO = "Read the following text. Some special magic numbers are hidden in it; remember them."
NEEDLE = "The special magic number for {key} is {value}."
QUESTION_ONE = " What is the special magic number for {key}? The special magic number for {key} is"
QUESTION_ALL = " What are the special magic numbers for {keys}? The special magic numbers are"


def needle_layout(variant: str, depth: float, num_needles: int, rng: random.Random) -> list[float]:
    """Depths of the needles of one sample; the first entry is the target / first needle."""
    if variant == "single":
        return [depth]
    if variant == "multi":
        return [depth + i * (1.0 - depth) / num_needles for i in range(num_needles)]
    return [depth] + [rng.random() for _ in range(num_needles - 1)]


def score_needle(variant: str, output: str, values: Sequence[str]) -> float:
    """Exact-match score of one output: see the module docstring (values[0] is the target)."""
    if variant == "multi":
        found = set(numbers_in(output))
        return sum(v in found for v in values) / len(values)
    return float(retrieval_exact(output, values[0]))


def run_needle(
    model,
    tokenizer,
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    variant: str = "single",
    num_needles: int = 3,
    num_samples: int = 3,
    haystack: str | Sequence[str] = "debian-faq",
    seed: int = 0,
    max_new_tokens: int | None = None,
    show_progress: bool = True,
    label: str = "model",
) -> dict:
    """Needle retrieval score for every (depth, length) cell.

    Args:
        model, tokenizer: a Hugging Face causal LM and its tokenizer.
        lengths: prompt lengths in tokens (heatmap columns).
        depths: needle depths in [0, 1] (heatmap rows).
        variant: ``"single"``, ``"multi"`` or ``"distractor"``.
        num_needles: needles per prompt for ``multi`` / ``distractor`` (>= 2).
        num_samples: prompts per cell.
        haystack: a haystack source name or a list of sentences.
        seed: makes keys, values, offsets and distractor depths reproducible.
        max_new_tokens: generated tokens (default 12 per value asked for).

    Returns:
        ``{"task": "needle", "variant", "lengths", "depths", "score": [[per length] per depth],
        "samples": [rows]}``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {VARIANTS}")
    if variant != "single" and not 2 <= num_needles <= len(KEYS):
        raise ValueError(f"num_needles={num_needles} must be between 2 and {len(KEYS)} for variant={variant!r}")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    sentences = haystack_sentences(haystack) if isinstance(haystack, str) else list(haystack)
    hay = Haystack(tokenizer, sentences)
    rng = random.Random(seed)
    count = 1 if variant == "single" else num_needles
    rows = []
    cells = [(length, depth) for length in lengths for depth in depths]
    for length, depth in tqdm(cells, desc=f"needle/{variant} {label}", unit="cell", disable=not show_progress):
        for _ in range(num_samples):
            keys = rng.sample(KEYS, count)
            values = [str(rng.randint(1_000_000, 9_999_999)) for _ in keys]
            layout = needle_layout(variant, depth, count, rng)
            needles = [(d, NEEDLE.format(key=k, value=v)) for d, k, v in zip(layout, keys, values)]
            if variant == "multi":
                names = ", ".join(keys[:-1]) + " and " + keys[-1]
                question, asked = QUESTION_ALL.format(keys=names), count
            else:
                question, asked = QUESTION_ONE.format(key=keys[0]), 1
            prompt = hay.build_prompt(length, needles, INTRO, question, offset=rng.randrange(len(sentences)))
            output = greedy_generate(model, tokenizer, prompt.input_ids, max_new_tokens or 12 * asked)
            rows.append({
                "length": length, "depth": depth, "actual_depth": round(prompt.depths[0], 4),
                "prompt_tokens": len(prompt.input_ids), "keys": keys, "values": values,
                "output": output, "score": score_needle(variant, output, values),
            })
    score = [[mean(r["score"] for r in rows if r["length"] == n and r["depth"] == d) for n in lengths] for d in depths]
    return {
        "task": "needle", "variant": variant, "num_needles": count, "lengths": list(lengths), "depths": list(depths),
        "num_samples": num_samples, "haystack": haystack if isinstance(haystack, str) else "custom",
        "score": score, "mean_score": mean(r["score"] for r in rows), "samples": rows,
    }

