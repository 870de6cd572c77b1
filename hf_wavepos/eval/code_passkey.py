"""Passkey retrieval inside source code, built from token ids (the retrieval benchmark's task).

The prose passkey test (`hf_wavepos.eval.passkey`) suits pretrained chat-capable models. Models
trained from scratch on the Python standard library need a task in their own language and a
fixed token layout, so that the same construction can serve as training data at L_train and as
the test at any length. One sample of ``length`` tokens is::

    haystack[:k]  NEEDLE                   haystack[k:]  QUESTION                      ANSWER
                  "\\npass_key = $48213\\n"                "\\n# recall:\\npass_key = $"  "48213"

where the haystack is a window of real code (training files for training rows, held-out files
for the test) and ``k`` is the needle's depth (0 = start of the window, 1 = just before the
question). As in the original passkey test ("The pass key is 12345 ... The pass key is"), the
question ends with the tokens that precede the key in the needle, so retrieval means copying what
followed them. The key follows a ``$``, a token that is rare in the standard library, so that
the first key token is found by the one token before it: the CPU benchmark's tiny models learn
this copy in 1500 steps, while a key after the ubiquitous ``=`` alone was not learnt in that
budget (its later tokens were, its first was not). Pieces are tokenised separately and
concatenated, so every sample has exactly ``length`` tokens and the answer occupies its last ones.

Scoring: a sample is correct when the model's argmax at every answer position equals the answer
token. Because each greedy step conditions only on the prompt and the previously emitted tokens,
this is exactly "greedy decoding of the prompt emits the answer's tokens", computed with one
forward pass per sample instead of one per generated token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

NEEDLE = "\npass_key = ${key}\n"
QUESTION = "\n# recall:\npass_key = $"
ANSWER = "{key}"


@dataclass
class PasskeyRows:
    """Passkey samples of one length.

    Attributes:
        input_ids: (N, length) int64 token ids, the answer at the end.
        answer_length: (N,) number of answer tokens at the end of each row.
        depth: (N,) needle depth actually used, in [0, 1].
        needle_distance: (N,) tokens from the needle's first token to the first answer token.
        keys: the N pass keys.
    """

    input_ids: np.ndarray
    answer_length: np.ndarray
    depth: np.ndarray
    needle_distance: np.ndarray
    keys: list[str]


def passkey_rows(
    token_stream: np.ndarray,
    tokenizer: Any,
    length: int,
    count: int,
    rng: np.random.Generator,
    *,
    depths: Sequence[float] | None = None,
    key_digits: int = 5,
) -> PasskeyRows:
    """Build ``count`` passkey samples of exactly ``length`` tokens from a stream of code tokens.

    Args:
        token_stream: (T,) token ids of concatenated code files (the haystack source).
        tokenizer: the model's tokenizer (encodes needle, question and answer).
        length: tokens per sample.
        count: number of samples.
        rng: source of keys, haystack windows and (without ``depths``) needle depths.
        depths: (count,) needle depths in [0, 1]; None draws them uniformly.
        key_digits: digits of each key (first digit non-zero).

    Returns:
        `PasskeyRows`.

    Raises:
        ValueError: the stream is shorter than a sample, or the needle, question and answer
            leave no room for a haystack in ``length`` tokens.
    """
    if count < 1:
        raise ValueError(f"count={count} must be >= 1")
    if depths is not None and len(depths) != count:
        raise ValueError(f"depths has {len(depths)} values for count={count} samples")
    depths_arr = rng.random(count) if depths is None else np.asarray(depths, dtype=np.float64)
    if np.any((depths_arr < 0) | (depths_arr > 1)):
        raise ValueError("depths must lie in [0, 1]")
    keys = [str(k) for k in rng.integers(10 ** (key_digits - 1), 10**key_digits, size=count)]
    question = _encode(tokenizer, [QUESTION])[0]
    needles = _encode(tokenizer, [NEEDLE.format(key=k) for k in keys])
    answers = _encode(tokenizer, [ANSWER.format(key=k) for k in keys])
    fixed = max(len(n) + len(a) for n, a in zip(needles, answers)) + len(question)
    if length - fixed < 1:
        raise ValueError(f"length={length} leaves no haystack: needle, question and answer take up to {fixed} tokens")
    if len(token_stream) < length:
        raise ValueError(f"the haystack stream has {len(token_stream)} tokens, fewer than length={length}")
    rows = np.empty((count, length), dtype=np.int64)
    answer_length = np.empty(count, dtype=np.int64)
    used_depth = np.empty(count)
    distance = np.empty(count, dtype=np.int64)
    starts = rng.integers(0, len(token_stream) - length + 1, size=count)
    for i in range(count):
        hay = length - len(needles[i]) - len(question) - len(answers[i])
        cut = int(round(depths_arr[i] * hay))
        window = token_stream[starts[i] : starts[i] + hay]
        rows[i] = np.concatenate([window[:cut], needles[i], window[cut:], question, answers[i]])
        answer_length[i] = len(answers[i])
        used_depth[i] = cut / hay
        distance[i] = length - len(answers[i]) - cut
    return PasskeyRows(rows, answer_length, used_depth, distance, keys)


@torch.inference_mode()
def passkey_correct(model: Any, rows: PasskeyRows, batch_size: int = 8, progress: str | None = None) -> np.ndarray:
    """Which samples the model retrieves: greedy decoding would emit every answer token.

    Args:
        model: a causal LM (eval mode is set and restored).
        rows: samples of one length.
        batch_size: samples per forward pass.
        progress: progress-bar label (None: no bar).

    Returns:
        (N,) bool.
    """
    from hf_wavepos.eval.perplexity import model_device

    device = model_device(model)
    was_training = model.training
    model.eval()
    keep = int(rows.answer_length.max()) + 1
    correct = np.zeros(len(rows.keys), dtype=bool)
    starts = range(0, len(rows.keys), batch_size)
    for start in tqdm(starts, desc=progress, unit="batch", disable=progress is None):
        ids = torch.as_tensor(rows.input_ids[start : start + batch_size], device=device)  # (b, L)
        logits = model(input_ids=ids, logits_to_keep=keep).logits  # (b, keep, V): predictions of the last keep tokens
        predicted = logits[:, :-1].argmax(-1).cpu().numpy()  # (b, keep - 1): predictions of tokens L-keep+1 .. L-1
        targets = rows.input_ids[start : start + batch_size, -(keep - 1) :]
        for j in range(ids.shape[0]):
            a = rows.answer_length[start + j]
            correct[start + j] = bool(np.all(predicted[j, -a:] == targets[j, -a:]))
    model.train(was_training)
    return correct


def _encode(tokenizer: Any, texts: list[str]) -> list[np.ndarray]:
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return [np.asarray(ids, dtype=np.int64) for ids in encoded]
