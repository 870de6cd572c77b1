"""Position methods behind one contract: what a method adds to attention.

Every method is turned into the two optional inputs of `hf_wavepos.wavepos_attention`:

    method    table p[r] (R, D)                     alibi_slopes (H,)
    wavelet   the wavelet table (Eq. 11-14)          None
    alibi     zeros (no q . p term)                  the standard ALiBi slopes (Press et al., 2022)
    nope      zeros                                  None

so every attention backend serves every method, and comparisons differ in nothing else. (RoPE
is the stock model: comparisons use the unconverted model.) An all-zero table costs next to
nothing: backends skip rows whose entries are all below the 1e-6 cut-off.

`document_ids_from_positions` is the one rule that turns ``position_ids`` of packed sequences
into document ids (used by the models' attention and by the data pipeline); `packed_document_ids`
says when it applies: only to inputs without a padding mask and without a cache, as in
transformers (pads inside a row repeat a position and must stay padding).
"""

from __future__ import annotations

import functools
import math

import torch

from hf_wavepos.basis import wavelet_table
from hf_wavepos.config import WavePosConfig
from hf_wavepos.wavelets import get_wavelet


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The standard ALiBi head slopes, shape (num_heads,), float32.

    For a power of two n: 2^(-8 i / n) for i = 1..n; otherwise the slopes of the closest lower
    power of two followed by every other slope of the next power of two (Press et al., 2022).
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}.")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two(closest)
    if closest != num_heads:
        slopes += power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def table_length(needed: int) -> int:
    """Rows to build for ``needed`` distances: the next power of two (>= 256), so that decoding,
    whose length grows by one each step, reuses a cached table instead of building a new one."""
    return max(256, 1 << max(0, needed - 1).bit_length())


@functools.lru_cache(maxsize=64)
def _zeros(length: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):
        return torch.zeros(length, head_dim, device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _slopes(num_heads: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        return alibi_slopes(num_heads).to(device)


def positional_inputs(
    config: WavePosConfig,
    head_dim: int,
    num_heads: int,
    needed: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The (table, alibi_slopes) pair that implements ``config.method`` (see module docstring).

    Args:
        config: the position method and its parameters.
        head_dim: D. num_heads: H (query heads).
        needed: distances that occur (q_offset + q_len); the table has at least this many rows.
        device, dtype: of the table (the slopes stay float32).

    Returns:
        table (R, D) with R >= needed, and alibi_slopes (H,) or None. Both are cached: read-only.
    """
    length = table_length(needed)
    device = torch.device(device)
    # The wavelet's registry entry is part of the key: re-registering a name never serves an old table.
    wavelet = get_wavelet(config.wavelet) if config.method == "wavelet" else None
    key = (config, wavelet, head_dim, num_heads, length, device, dtype)
    hit = _POSITIONAL_INPUTS.get(key)
    if hit is None:
        hit = _positional_inputs(config, head_dim, num_heads, length, device, dtype)
        if device.type != "meta":
            if len(_POSITIONAL_INPUTS) >= 64:
                _POSITIONAL_INPUTS.pop(next(iter(_POSITIONAL_INPUTS)))
            _POSITIONAL_INPUTS[key] = hit
    return hit


# A plain dict (not functools.lru_cache): under torch.compile a hit is read as a constant input,
# so a traced decoding step neither rebuilds the table nor depends on how it was built.
_POSITIONAL_INPUTS: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}


def _positional_inputs(config, head_dim, num_heads, length, device, dtype):
    if config.method == "wavelet":
        return wavelet_table(config, head_dim, length, device, dtype), None
    table = _zeros(length, head_dim, device, dtype)
    if config.method == "alibi":
        return table, _slopes(num_heads, device)
    return table, None


def document_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """Where a new document starts inside a row of packed sequences.

    Rule: a document starts wherever the position does not step by exactly 1 from the previous
    token (a restart at 0, or any jump). The first token of a row starts the row's first
    document and is not marked. The same rule as transformers' packed-sequence detection.

    Args:
        position_ids: (B, L) integer positions.

    Returns:
        (B, L) bool, True at every token that starts a document after the first one of its row.
    """
    if position_ids.dim() != 2:
        raise ValueError(f"position_ids must be (batch, length), got shape {tuple(position_ids.shape)}.")
    step = torch.diff(position_ids, dim=-1)
    starts = torch.zeros(position_ids.shape, dtype=torch.bool, device=position_ids.device)
    starts[:, 1:] = step != 1
    return starts


def document_ids_from_positions(position_ids: torch.Tensor) -> torch.Tensor:
    """Document index of every token of packed sequences: 0 for a row's first document, +1 at
    each start found by `document_starts`. Attention is restricted to tokens of the same id.

    Args:
        position_ids: (B, L) integer positions (restarting at 0 per document when packed).

    Returns:
        (B, L) int64 document ids; all zero when every row holds one document. O(L), no L x L mask.
    """
    return document_starts(position_ids).long().cumsum(-1)


def packed_document_ids(
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    cache: object | None,
    batch_size: int | None = None,
) -> torch.Tensor | None:
    """Document ids of a packed batch, or None when the inputs are not read as packed.

    transformers' packed-sequence rule (``masking_utils.find_packed_sequence_indices``): documents
    are read from ``position_ids`` only when neither a padding mask nor a cache is given. With a
    mask, positions that do not step by 1 are padding (``generate()`` gives pads inside a row the
    position 0), never a document boundary; with a cache the positions continue earlier tokens.

    Args:
        position_ids: (B|1, L) positions as passed to the model, or None.
        attention_mask: the padding mask passed to the model ((B, L) or 4-D), or None.
        cache: the cache passed to the model, or None.
        batch_size: B, to broadcast (1, L) positions to every row (default: their first dimension).

    Returns:
        (B, L) int64 ids (`document_ids_from_positions`), or None: not packed, or (outside
        ``torch.compile``, where the check would be data dependent) every row holds one document.
    """
    if position_ids is None or attention_mask is not None or cache is not None:
        return None
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    if batch_size is not None:
        position_ids = position_ids.expand(batch_size, -1)
    document_ids = document_ids_from_positions(position_ids)
    if not torch.compiler.is_compiling() and not bool((document_ids[:, -1] != 0).any()):
        return None
    return document_ids
