"""Tile configurations of every kernel per (GPU target, input precision, head dim): the one table.

Each row gives, per kernel, ``(block, num_warps, num_stages)``: ``block`` is the tile size (BLOCK
queries x BLOCK keys for the forward and both backward kernels, BLOCK_N keys per tile for
decoding). The rows were chosen by compiling every kernel for the target through Triton's
ahead-of-time path (`compile_check`; ``python bench/triton_compile.py`` prints the table) so that

* no default configuration spills more than `SPILL_LIMIT` bytes of registers per thread,
* shared memory stays within `SHARED_FRACTION` of the target's per-block limit,

and the CI test ``tests/attention/test_triton_compile.py`` keeps them so. They are chosen for
compiled resource use, not yet for speed (no GPU has timed them): where several fit, the larger
tile was taken. The wavelet kernels hold more tiles in registers than FlashAttention (the carried
q.p block, its gradient, the skew), so their tiles are smaller: 64 x 64 with 8 warps for the
forward, 32 x 32 for the backward at 16 bits.

Targets: ``sm80`` is compute capability 8.x (A100: 163 KB of shared memory per block, 8.6 / 8.9
parts: 99 KB, the limit the rows are held to), ``sm90`` is 9.0 and newer (H100 / H200: 227 KB).
``interpreter`` is ``TRITON_INTERPRET=1`` on the CPU, where 16 x 16 tiles keep the tests fast.

Float32 inputs use ``tf32x3`` dots: three TF32 tensor-core products per dot, whose error is that
of IEEE float32 (an emulation on the CPU at L = 1000, D = 128 gave 5.5e-7 against 1.3e-6 for a
float32 matmul, and 1.2e-3 for plain TF32), so the 2x-PyTorch rule holds where TF32 would break
it. Exact ``ieee`` dots run on CUDA cores and spilled 3-127 KB per thread at 64 x 64. Float32
needs 16 x 16 tiles to stay within the spill limit, and is not served at head dim 256 (every
tile tried spilled >= 0.28 KB): those calls get a clear error (`check_served`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from hf_wavepos.attention.triton.support import padded_head_dim

SPILL_LIMIT = 256  # bytes of register spill stores per thread a default configuration may have
SHARED_FRACTION = 0.9  # of the target's shared memory per block
# Usable shared memory per block (bytes) of the smallest part a row serves: sm80 rows also run on
# 8.6 / 8.9 (99 KB; the A100 has 163 KB), sm90 rows on 9.0 (227 KB) and later 10.x parts.
SHARED_LIMIT = {"sm80": 99 * 1024, "sm90": 227 * 1024}
COMPUTE_CAPABILITY = {"sm80": 80, "sm90": 90}  # the target each row is compiled for
BLOCK_RANGE = (16, 128)  # prefill tiles: tl.dot needs >= 16 rows in 16-bit types
BLOCK_N_RANGE = (16, 256)  # decoding key tiles
MAX_SPLITS = 65535  # decoding slices: CUDA's limit on grid axis 1


@dataclass(frozen=True)
class TileConfig:
    """Tile size and launch options of one kernel."""

    block: int
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class KernelConfigs:
    """The configuration of each kernel for one (target, precision, head dim), and the table chunk.

    ``chunk``: table columns per chunk for support skipping (`support.chunk_supports`).
    """

    forward: TileConfig
    backward_dq: TileConfig
    backward_dkdv: TileConfig
    decode: TileConfig
    chunk: int

    def with_block(self, block: int | None) -> "KernelConfigs":
        """The same, with the prefill tile size (forward and both backward kernels) overridden."""
        if block is None:
            return self
        f, q, kv = self.forward, self.backward_dq, self.backward_dkdv
        return KernelConfigs(
            TileConfig(block, f.num_warps, f.num_stages), TileConfig(block, q.num_warps, q.num_stages),
            TileConfig(block, kv.num_warps, kv.num_stages), self.decode, self.chunk,
        )


def _row(forward, dq, dkdv, decode, chunk=32) -> KernelConfigs:
    return KernelConfigs(TileConfig(*forward), TileConfig(*dq), TileConfig(*dkdv), TileConfig(*decode), chunk)


# (target, precision, padded head dim) -> per kernel (block, num_warps, num_stages).
# Head dims up to 64 use the 64 row (chunk = min(32, padded head dim)).
TABLE: dict[tuple[str, str, int], KernelConfigs] = {
    #  target  inputs     D          forward      backward dq  backward dk/dv  decode
    ("sm80", "16-bit", 64): _row((64, 8, 2), (32, 4, 2), (32, 4, 2), (64, 4, 2)),
    ("sm80", "16-bit", 128): _row((64, 8, 2), (32, 4, 2), (32, 8, 2), (64, 4, 2)),
    ("sm80", "float32", 64): _row((16, 4, 2), (16, 4, 2), (16, 4, 2), (32, 4, 2)),
    ("sm80", "float32", 128): _row((16, 4, 2), (16, 4, 2), (16, 4, 2), (32, 4, 2)),
    ("sm90", "16-bit", 64): _row((64, 8, 2), (32, 4, 2), (64, 8, 2), (64, 4, 2)),
    ("sm90", "16-bit", 128): _row((64, 8, 2), (32, 4, 2), (32, 8, 2), (64, 4, 2)),
    ("sm90", "float32", 64): _row((16, 4, 2), (16, 4, 2), (16, 4, 2), (32, 4, 2)),
    ("sm90", "float32", 128): _row((16, 4, 2), (16, 4, 2), (16, 4, 2), (32, 4, 2)),
    ("sm80", "16-bit", 256): _row((32, 8, 2), (16, 4, 2), (16, 4, 2), (32, 4, 2)),
    ("sm90", "16-bit", 256): _row((32, 8, 2), (16, 4, 2), (16, 4, 2), (32, 4, 2)),
    # float32 at D = 256 is not served: its tf32x3 dots spill >= 0.28 KB per thread at every
    # tile tried (16 x 16 with 4 or 8 warps); see `unserved`.
}
HEAD_DIMS = (64, 128, 256)  # padded head dims with rows; smaller ones use the 64 row
INTERPRETER = _row((16, 4, 1), (16, 4, 1), (16, 4, 1), (16, 4, 1), chunk=16)


def precision_of(dtype: torch.dtype) -> str:
    """The table's input-precision key: ``16-bit`` (float16, bfloat16) or ``float32``."""
    return "float32" if dtype == torch.float32 else "16-bit"


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of every ``tl.dot``: tf32x3 for float32 inputs (ignored for 16-bit)."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


@functools.lru_cache(maxsize=16)
def target_of(device: torch.device) -> str:
    """``sm90`` (compute capability >= 9), ``sm80`` (other CUDA devices) or ``interpreter`` (CPU)."""
    if device.type != "cuda":
        return "interpreter"
    major, _ = torch.cuda.get_device_capability(device)
    return "sm90" if major >= 9 else "sm80"


def unserved(dtype: torch.dtype, head_dim: int) -> str | None:
    """Why the kernels do not serve a (dtype, head dim), or None when a table row serves it."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"{dtype} (float16, bfloat16 and float32 only)"
    if padded_head_dim(head_dim) > max(HEAD_DIMS):
        return f"head_dim {head_dim} (at most {max(HEAD_DIMS)})"
    if (precision_of(dtype), max(64, padded_head_dim(head_dim))) not in {(p, d) for _, p, d in TABLE}:
        return f"{dtype} with head_dim {head_dim} (no configuration compiles without register spills)"
    return None


def check_served(dtype: torch.dtype, head_dim: int) -> None:
    """Raises ValueError when `unserved` gives a reason, naming the alternatives."""
    reason = unserved(dtype, head_dim)
    if reason is not None:
        raise ValueError(
            f"the triton backend does not serve {reason}; use backend='chunked' (any dtype and head dim) or "
            "'reference', or bfloat16 / float16 inputs."
        )


def configs_for(target: str, dtype: torch.dtype, head_dim: int) -> KernelConfigs:
    """The table row for a call: `TABLE` on GPU targets, `INTERPRETER` on the CPU.

    Raises:
        ValueError: a (dtype, head dim) the kernels do not serve (`unserved`) or an unknown target.
    """
    check_served(dtype, head_dim)
    if target == "interpreter":
        return INTERPRETER
    key = (target, precision_of(dtype), max(64, padded_head_dim(head_dim)))
    if key not in TABLE:
        raise ValueError(f"unknown triton target {target!r}; targets: {sorted({t for t, _, _ in TABLE})}.")
    return TABLE[key]


def default_chunk(head_dim: int) -> int:
    """Table columns per support chunk: 32 (16 when the padded head dim is 16)."""
    return min(32, padded_head_dim(head_dim))


# ------------------------------------------------------------------------------ validation
def _check_power_of_two(name: str, value, low: int, high: int, why: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low or value > high or value & (value - 1):
        raise ValueError(
            f"{name} must be a power of two in [{low}, {high}] ({why}), got {value!r}; leave {name}=None "
            "for the tuned default."
        )


def check_launch_args(
    head_dim: int, *, block: int | None = None, chunk: int | None = None,
    block_n: int | None = None, n_splits: int | None = None,
) -> None:
    """Validate the tile arguments of `triton_attention` / `triton_decode_attention` before any work.

    Args:
        head_dim: D of the call.
        block: prefill tile (queries and keys), a power of two in `BLOCK_RANGE`.
        chunk: table columns per support chunk, a power of two >= 16 dividing the padded head dim.
        block_n: decoding key tile, a power of two in `BLOCK_N_RANGE`.
        n_splits: decoding cache slices, an int in [1, `MAX_SPLITS`].

    Raises:
        ValueError naming the argument and the fix.
    """
    _check_power_of_two("block", block, *BLOCK_RANGE, "tl.dot needs >= 16 rows; larger tiles exceed shared memory")
    _check_power_of_two("block_n", block_n, *BLOCK_N_RANGE, "tl.dot needs >= 16 keys in 16-bit types")
    block_d = padded_head_dim(head_dim)
    _check_power_of_two("chunk", chunk, 16, block_d, f"it must divide the padded head dim {block_d}")
    if n_splits is not None and (
        isinstance(n_splits, bool) or not isinstance(n_splits, int) or not 1 <= n_splits <= MAX_SPLITS
    ):
        raise ValueError(
            f"n_splits must be an int in [1, {MAX_SPLITS}] (cache slices, one program each), got {n_splits!r}; "
            "leave n_splits=None for two programs per multiprocessor."
        )
