"""Host-side preparation of the table for the kernels: per-chunk supports (torch only, no sync).

The kernels split the head dimension into chunks of ``chunk`` columns. Chunk c may be skipped
for a block of distances [d, d + n) when every entry of p[r] in that chunk is below the 1e-6
cutoff for r >= d (METHOD.md, Sec. 1): ``support[c]`` is one more than the largest such row
with a significant entry, the largest `hf_wavepos.basis.column_supports` of its columns. Sorting the chunks by support lets a kernel find the chunks a block
needs with one comparison: they are the sorted positions ``first .. n_chunks - 1`` with
``first = #{c : support[c] <= d}``.

Everything is computed with tensor ops on the table's device (no ``.item()``), and cached per
table, so a training step adds no host-device synchronisation.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from hf_wavepos.basis import CUTOFF, column_supports

_CACHE_SIZE = 32


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def padded_head_dim(head_dim: int) -> int:
    """Head dimension the kernels tile over: a power of two >= 16 (extra columns are masked)."""
    return max(16, next_power_of_2(head_dim))


@dataclass(frozen=True)
class ChunkSupports:
    """Per-chunk supports of one table (all int32 tensors of shape (n_chunks,), on its device).

    Attributes:
        by_chunk: support of chunk c (columns c * chunk .. c * chunk + chunk - 1).
        sorted: the supports in ascending order.
        order: chunk index of each sorted entry (``by_chunk[order] == sorted``).
        chunk: columns per chunk.
    """

    by_chunk: torch.Tensor
    sorted: torch.Tensor
    order: torch.Tensor
    chunk: int


_cache: dict[tuple, tuple[weakref.ref, ChunkSupports]] = {}


def chunk_supports(table: torch.Tensor, chunk: int, cutoff: float = CUTOFF) -> ChunkSupports:
    """Supports of the column chunks of ``table`` (R, D); see the module docstring.

    Args:
        table: (R, D) positional table p[r] (any float dtype, any device).
        chunk: columns per chunk, a power of two >= 16 dividing `padded_head_dim` (D).
        cutoff: entries with |p| below it (or exactly zero) count as zero.

    Returns:
        `ChunkSupports` with padded_head_dim(D) // chunk entries; padding columns have support 0.
    """
    R, D = table.shape
    block_d = padded_head_dim(D)
    if chunk < 16 or chunk & (chunk - 1) or block_d % chunk:
        raise ValueError(
            f"chunk must be a power of two >= 16 that divides the padded head dim {block_d}, got {chunk}."
        )
    if torch.compiler.is_compiling():  # traced into the graph: plain tensor ops, no cache
        return _compute(table, chunk, cutoff, block_d // chunk)
    key = (table.data_ptr(), tuple(table.shape), tuple(table.stride()), table.dtype, table.device,
           table._version, chunk, cutoff)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is table:  # the same live tensor, unchanged (_version)
        return hit[1]
    result = _compute(table, chunk, cutoff, block_d // chunk)
    if len(_cache) >= _CACHE_SIZE:
        _cache.pop(next(iter(_cache)))
    _cache[key] = (weakref.ref(table), result)
    return result


def _compute(table: torch.Tensor, chunk: int, cutoff: float, n_chunks: int) -> ChunkSupports:
    with torch.no_grad():
        per_column = column_supports(table, cutoff)  # (D,)
        padded = torch.nn.functional.pad(per_column, (0, n_chunks * chunk - table.shape[1]))  # support 0
        by_chunk = padded.view(n_chunks, chunk).amax(dim=-1).to(torch.int32)
        sorted_support, order = torch.sort(by_chunk, stable=True)
    return ChunkSupports(by_chunk, sorted_support.to(torch.int32), order.to(torch.int32), chunk)
