"""Perplexity against context length, for any Hugging Face causal LM object.

Two protocols (docs/METHOD.md, Sec. 3; the paper's main protocol is the first):

- ``"full"`` (full sequence): for each length L, the first L tokens of every document that has
  at least L tokens go through the model in one forward pass; the negative log-likelihood (NLL)
  is summed over the L - 1 predicted tokens. Perplexity is ``exp(sum NLL / sum predicted)``, the
  token-weighted mean over documents.
- ``"sliding"`` (as in the transformers perplexity guide): a window of L tokens moves over each
  whole document (at least L tokens long) by ``stride`` tokens; each window scores only the tokens
  not scored before, with the earlier tokens of the window as context, so every token after the
  first is scored exactly once while stride < L. With stride = L the windows are non-overlapping
  chunks and, as in the guide, the first token of each chunk has no context and is not scored.

Documents shorter than L are skipped at that length with a warning, never padded into the score.
No padding is ever used: every window of a batch has the same length.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

MODES = ("full", "sliding")


@dataclass(frozen=True)
class Window:
    """One forward pass: ``ids`` (list of token ids); the last ``num_targets`` of them are scored."""

    ids: tuple[int, ...]
    num_targets: int


@dataclass
class LengthResult:
    """Perplexity at one context length (one row of the report)."""

    length: int
    perplexity: float
    mean_nll: float
    num_documents: int
    num_tokens: int
    skipped_documents: int


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameterless module)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def tokenize_documents(texts: Sequence[str], tokenizer, max_tokens: int | None = None) -> list[list[int]]:
    """Token ids of each text (with the tokenizer's special tokens, e.g. BOS), cut at ``max_tokens``."""
    out = []
    for text in texts:
        ids = list(tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
        out.append(ids[:max_tokens] if max_tokens else ids)
    return out


def perplexity_windows(doc: Sequence[int], length: int, mode: str, stride: int | None = None) -> list[Window]:
    """The windows that score one document at one context length.

    Args:
        doc: the document's token ids (at least ``length`` of them).
        length: the context length L.
        mode: ``"full"`` (one window, the first L tokens, L - 1 targets) or ``"sliding"``.
        stride: sliding mode only: how far the window moves (1 <= stride <= L).

    Returns:
        Windows whose targets together cover tokens 1 .. end exactly once.
    """
    if len(doc) < length:
        raise ValueError(f"document has {len(doc)} tokens, fewer than length={length}")
    if mode == "full":
        return [Window(tuple(doc[:length]), length - 1)]
    windows, prev_end = [], 0
    for begin in range(0, len(doc), stride):
        end = min(begin + length, len(doc))
        ids = tuple(doc[begin:end])
        windows.append(Window(ids, min(end - prev_end, len(ids) - 1)))
        prev_end = end
        if end == len(doc):
            break
    return windows


def _supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


@torch.inference_mode()
def window_nll(model, windows: Sequence[Window], batch_size: int = 1, progress: tqdm | None = None) -> tuple[float, int]:
    """Sum of NLL (nats) and number of scored tokens over ``windows``.

    Windows with equal (length, num_targets) are batched up to ``batch_size``; logits are cast to
    float32 in chunks of 2048 positions, so low-precision models lose nothing in the softmax.
    """
    device = model_device(model)
    keep = _supports_logits_to_keep(model)
    groups: dict[tuple[int, int], list[Window]] = {}
    for w in windows:
        groups.setdefault((len(w.ids), w.num_targets), []).append(w)
    total_nll, total_count = 0.0, 0
    for (_, n), group in groups.items():
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            ids = torch.tensor([w.ids for w in batch], dtype=torch.long, device=device)  # (B, L)
            kwargs = {"logits_to_keep": n + 1} if keep else {}
            logits = model(input_ids=ids, use_cache=False, **kwargs).logits  # (B, n+1 or L, V)
            logits = logits[:, -(n + 1) : -1]  # (B, n, V): predictions for the last n tokens
            targets = ids[:, -n:]  # (B, n)
            for c in range(0, n, 2048):
                chunk = logits[:, c : c + 2048].float()
                total_nll += F.cross_entropy(
                    chunk.reshape(-1, chunk.shape[-1]), targets[:, c : c + 2048].reshape(-1), reduction="sum"
                ).item()
            total_count += n * len(batch)
            if progress is not None:
                progress.update(len(batch))
    return total_nll, total_count


def _check_protocol(lengths: Sequence[int], mode: str, stride: int | None) -> list[int]:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {MODES}")
    lengths = [int(n) for n in lengths]
    if not lengths or any(n < 2 for n in lengths):
        raise ValueError(f"lengths={lengths} must be a non-empty list of integers >= 2")
    if mode == "sliding":
        if stride is None or stride < 1 or stride > min(lengths):
            raise ValueError(f"stride={stride} must be set for mode='sliding', with 1 <= stride <= min(lengths)={min(lengths)}")
    elif stride is not None:
        raise ValueError("stride is only used with mode='sliding'; drop it or set mode='sliding'")
    return sorted(set(lengths))


def perplexity_by_length(
    model,
    documents: Sequence[str] | Sequence[Sequence[int]],
    lengths: Sequence[int],
    *,
    tokenizer=None,
    mode: str = "full",
    stride: int | None = None,
    batch_size: int = 1,
    max_tokens: int | None = None,
    show_progress: bool = True,
    label: str = "model",
) -> list[LengthResult]:
    """Perplexity of ``model`` at each context length in ``lengths``.

    Args:
        model: a Hugging Face causal LM (any object whose ``forward(input_ids=...)`` returns
            ``.logits`` of shape (B, L, V)); put it on its device and dtype first.
        documents: texts (then ``tokenizer`` is required) or lists of token ids.
        lengths: context lengths L in tokens (each >= 2).
        tokenizer: turns texts into ids (special tokens such as BOS included).
        mode: ``"full"`` or ``"sliding"`` (see the module docstring).
        stride: sliding mode: tokens the window moves (1 <= stride <= min(lengths)).
        batch_size: windows per forward pass.
        max_tokens: cut every document to this many tokens first (sliding mode cost).
        show_progress: draw a tqdm bar.
        label: name shown on the progress bar.

    Returns:
        One `LengthResult` per length, ascending.

    Raises:
        ValueError: bad arguments, or no document reaches some requested length (the message
            gives the longest document's length).
    """
    lengths = _check_protocol(lengths, mode, stride)
    if documents and isinstance(documents[0], str):
        if tokenizer is None:
            raise ValueError("documents are strings, so tokenizer is required (or pass token id lists)")
        docs = tokenize_documents(documents, tokenizer, max_tokens)
    else:
        docs = [list(d)[:max_tokens] if max_tokens else list(d) for d in documents]
    if not docs:
        raise ValueError("documents is empty; give at least one document at least as long as max(lengths)")
    longest = max(len(d) for d in docs)
    if longest < max(lengths):
        raise ValueError(
            f"no document reaches length {max(lengths)} tokens (the longest has {longest}); "
            f"lower the lengths or use longer documents"
        )
    plan = {}
    for length in lengths:
        usable = [d for d in docs if len(d) >= length]
        skipped = len(docs) - len(usable)
        if skipped:
            warnings.warn(
                f"{skipped} of {len(docs)} documents are shorter than {length} tokens and are skipped at that length",
                stacklevel=2,
            )
        windows = [w for d in usable for w in perplexity_windows(d, length, mode, stride)]
        plan[length] = (windows, len(usable), skipped)
    was_training = model.training
    model.eval()
    results = []
    total = sum(len(w) for w, _, _ in plan.values())
    with tqdm(total=total, desc=f"perplexity {label} ({mode})", unit="window", disable=not show_progress) as bar:
        for length, (windows, used, skipped) in plan.items():
            bar.set_postfix(length=length)
            nll, count = window_nll(model, windows, batch_size, bar)
            mean = nll / count
            results.append(LengthResult(length, math.exp(mean), mean, used, count, skipped))
    model.train(was_training)
    return results


def perplexity_report(
    models: Mapping[str, tuple[object, object]] | Iterable[tuple[str, object, object]],
    texts: Sequence[str],
    lengths: Sequence[int],
    *,
    mode: str = "full",
    stride: int | None = None,
    batch_size: int = 1,
    max_tokens: int | None = None,
    source: str | None = None,
    show_progress: bool = True,
) -> dict:
    """Perplexity vs length for several models on the same texts (each with its own tokenizer).

    Args:
        models: label -> (model, tokenizer), or an iterable of (label, model, tokenizer); a
            generator lets a caller load one model at a time.
        texts: the documents.
        lengths, mode, stride, batch_size, max_tokens: as in `perplexity_by_length`.
        source: where the texts came from (recorded in the report).

    Returns:
        ``{"task": "perplexity", "protocol": {...}, "results": {label: [row, ...]}}`` where each
        row is a `LengthResult` as a dict. `hf_wavepos.eval.report.write_perplexity` saves it.
    """
    _check_protocol(lengths, mode, stride)
    items = ((label, m, t) for label, (m, t) in models.items()) if isinstance(models, Mapping) else models
    results = {}
    for label, model, tokenizer in items:
        if label in results:
            raise ValueError(f"two models have the label {label!r}; give each a distinct label")
        rows = perplexity_by_length(
            model, texts, lengths, tokenizer=tokenizer, mode=mode, stride=stride, batch_size=batch_size,
            max_tokens=max_tokens, show_progress=show_progress, label=label,
        )
        results[label] = [asdict(r) for r in rows]
    if not results:
        raise ValueError("models is empty; give at least one (label, model, tokenizer)")
    return {
        "task": "perplexity",
        "protocol": {
            "mode": mode, "stride": stride, "lengths": sorted(set(int(n) for n in lengths)),
            "num_texts": len(texts), "max_tokens": max_tokens, "source": source,
        },
        "results": results,
    }
