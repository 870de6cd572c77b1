"""Query chunks of the chunked backend: their bounds, contiguous copies, band and skew layout.

For a chunk of c queries at positions m0 .. m1 = m0 + c - 1 (keys 0 .. K - 1, K = m1 + 1):

- **Band** (the 1e-6 rule of docs/METHOD.md, Sec. 1): with R one more than the largest distance
  whose table row has an entry >= 1e-6 (`hf_wavepos.basis.table_support` with
  `hf_wavepos.basis.skip_cutoff`: in float64 any non-zero entry, so float64 stays exact),
  keys n < kb = max(0, m0 - R + 1) are at distance >= R from every query of the chunk; their
  positional term is skipped. The band is the keys kb .. K - 1: W = K - kb of them, and the
  distances that occur in it are 0 .. W - 1.
- **Positional logits**: one GEMM for every head of the chunk (the table is shared by all heads
  and layers): QP = Q_c @ T^T with Q_c of shape (B * H * c, D) and T[u] = p[W - 1 - u] (the last
  W rows of `reversed_table`), so QP[i, u] = q_i . p[W - 1 - u].
- **Skew view** (no gather, no copy): q_i . p[m_i - n] for the band key n = kb + j is
  QP[i, c - 1 - i + j]. In a buffer whose rows hold QP followed by c - 1 or more columns, that is a
  strided view (row stride one less than the buffer's): no two entries share memory, the keys a
  query may see read its QP, and future keys (n > m_i) read the extra columns. Those hold -inf
  in the forward buffer, so adding the view to the content logits also applies the causal mask.
- **Backward**: dS of the band is written through the same view into a gradient buffer (future
  keys, where dS is zero, land in the extra columns); its QP columns times T give q's
  positional gradient.

Buffers are kept per thread and chunk size for a whole call (`BandWorkspace`): a chunk with a
narrower band uses the rightmost W of the Wmax QP columns, so the -inf columns never move.
"""

from __future__ import annotations

import math

import torch

from hf_wavepos.attention.contract import AttentionCall


def reversed_table(table: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """(width, D) contiguous: row u is p[width - 1 - u], in ``dtype``; the last row is p[0].

    The reversed table of a narrower band w is its suffix ``[-w:]``.
    """
    return table[:width].flip(0).to(dtype).contiguous()


class QueryChunks:
    """The query rows 0 .. Lq - 1 in chunks of ``size`` (the last one may be shorter)."""

    def __init__(self, length: int, size: int):
        self.length, self.size = length, size
        self.full = length // size
        self.bounds = [(s, min(s + size, length)) for s in range(0, length, size)]

    def split(self, x: torch.Tensor, scale: float | None = None) -> list[torch.Tensor]:
        """(B, H, Lq, X) of any strides -> one contiguous (B, H, c, X) tensor per chunk, times
        ``scale`` when given, in two copies in all (one pass over x: a model's transposed view of
        its projection is read in place)."""
        cut = self.full * self.size
        parts = []
        if self.full:
            block = x[:, :, :cut].unflatten(2, (self.full, self.size)).permute(2, 0, 1, 3, 4)
            parts = list(_contiguous_copy(block, scale).unbind(0))
        if cut < self.length:
            parts.append(_contiguous_copy(x[:, :, cut:], scale))
        return parts


def _contiguous_copy(x: torch.Tensor, scale: float | None) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return out.copy_(x) if scale is None else torch.mul(x, scale, out=out)


class ChunkGeometry:
    """Indices of one query chunk (see the module docstring): queries ``start .. stop - 1``.

    Attributes:
        start, stop, size: the chunk's query rows (size c).
        first, last: absolute positions m0, m1 of its first and last query.
        keys: K = m1 + 1, the keys that can be visible (the contract guarantees K <= Lk).
        band_start: kb, the first key whose positional term is computed.
        width: W = K - kb, keys (and distances 0 .. W - 1) of the band; 0 for an all-zero table.
    """

    def __init__(self, start: int, stop: int, call: AttentionCall, support: int):
        self.start, self.stop, self.size = start, stop, stop - start
        self.first, self.last = call.q_offset + start, call.q_offset + stop - 1
        self.keys = self.last + 1
        self.band_start = max(0, self.first - support + 1) if support > 0 else self.keys
        self.width = self.keys - self.band_start

    def positions(self, device: torch.device) -> torch.Tensor:
        """(c,) absolute positions m0 .. m1 of the chunk's queries."""
        return torch.arange(self.first, self.last + 1, device=device)


ROW_ALIGN = 16  # elements: a buffer row starts on a 64-byte boundary (float32)


class ScratchBuffers:
    """Contiguous buffers of one thread, reused by every chunk of a call (logits, probabilities, dP).

    A chunk's (N, c, K) products reach tens of MiB at long lengths. Allocated afresh, a block may
    be page-faulted in again on every chunk (the allocator can hand large freed blocks back to the
    system): in a loop of forward chunks alone (AMD EPYC, one thread, N = 9, c = 64, K = 8192,
    float32) 45 ms a chunk with fresh results against 28 ms with reused buffers. In whole calls
    the allocator often reused the blocks anyway: one thread no change, two threads beside another
    busy process 1.88x -> 1.77x SDPA (L = 8192, 9 / 3 heads, `long`, forward).
    """

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.dtype, self.device = dtype, device
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A contiguous tensor of ``shape`` in buffer ``name``: its contents are whatever the
        previous user of ``name`` left, and the next user of ``name`` overwrites them."""
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[name] = torch.empty(numel, dtype=self.dtype, device=self.device)
        return buffer[:numel].view(shape)


class BandWorkspace:
    """The positional buffers of one thread for chunks of one size c: (N, c, Wmax + c - 1) each
    (rows padded to a multiple of `ROW_ALIGN`; the padding is never read), and the thread's
    `ScratchBuffers` (``scratch``, shared by its workspaces of every chunk size).

    Args:
        heads: N = B * H. size: c. max_width: Wmax, the widest band of the call.
    """

    def __init__(self, heads: int, size: int, max_width: int, scratch: ScratchBuffers):
        dtype, device = scratch.dtype, scratch.device
        self.scratch = scratch
        # Rows padded to a multiple of `ROW_ALIGN` elements: with an odd row length the positional
        # GEMM writing into the buffer ran 1.8x slower (AMD EPYC, c = 64, Wmax = 8192, float32).
        columns = -(-(max_width + size - 1) // ROW_ALIGN) * ROW_ALIGN
        self.shape = (heads, size, columns)
        self.max_width, self.dtype, self.device = max_width, dtype, device
        self._logits: torch.Tensor | None = None
        self._grad: torch.Tensor | None = None

    def logits(self) -> torch.Tensor:
        """The forward buffer: QP goes in its first Wmax columns, the rest (c - 1 and the padding) are -inf."""
        if self._logits is None:
            self._logits = torch.empty(self.shape, dtype=self.dtype, device=self.device)
            self._logits[..., self.max_width :].fill_(float("-inf"))
        return self._logits

    def gradient(self, geo: ChunkGeometry) -> torch.Tensor:
        """The backward buffer, with the columns `skew_view` leaves unwritten for ``geo`` zeroed."""
        if self._grad is None:
            self._grad = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        first = self.max_width - geo.width
        self._grad[..., first : first + geo.size - 1].zero_()
        return self._grad

    def band_columns(self, buffer: torch.Tensor, geo: ChunkGeometry) -> torch.Tensor:
        """(N * c, W) strided view of QP's columns of ``geo`` in ``buffer`` (the last W of Wmax)."""
        return buffer.view(-1, buffer.shape[-1])[:, self.max_width - geo.width : self.max_width]

    def skew_view(self, buffer: torch.Tensor, geo: ChunkGeometry) -> torch.Tensor:
        """(N, c, W) view with [..., i, j] = QP[..., i, c - 1 - i + j] (see the module docstring)."""
        c, cols = geo.size, buffer.shape[-1]
        offset = buffer.storage_offset() + self.max_width - geo.width + c - 1
        return buffer.as_strided((buffer.shape[0], c, geo.width), (c * cols, cols - 1, 1), offset)
