"""The summed next-token loss every objective of the training loop shares (and its target count)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hf_wavepos.data.packing import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the labelled tokens.

    Args:
        logits: (B, L, V) model outputs.
        labels: (B, L) unshifted labels; position i's logits predict labels[i + 1]; `IGNORE_INDEX`
            entries (document starts) are skipped.

    Returns:
        Scalar float32 sum (divide by `count_targets` of the whole global batch for the mean).
    """
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(shifted, labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def count_targets(labels: torch.Tensor) -> int:
    """Number of tokens `token_loss_sum` adds up for ``labels`` (B, L)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
