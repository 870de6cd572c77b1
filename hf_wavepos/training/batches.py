"""Which packed blocks each process trains on at each optimiser step.

The data position is the optimiser step alone: the blocks of step s depend only on (seed, s), so
a resumed run continues exactly where the interrupted one stopped, and the *global* batch of
each step is the same whatever the number of processes (so one process with gradient
accumulation and two processes without it see the same data).

Global batch of step s (``G = global_batch_size`` blocks) is split into
``accumulation_steps x num_processes`` micro-batches of ``per_device_batch_size`` blocks;
process p's micro-batch a is the slice ``[(a * P + p) * B, (a * P + p + 1) * B)``.

- `PackedBatches` (map-style): a seeded permutation per epoch over the packed blocks; steps
  past the end of an epoch continue in the next epoch's permutation (the last partial global
  batch of an epoch is skipped).
- `StreamingBatches`: blocks in stream order; epoch e re-reads the stream (shuffled with seed +
  e when a shuffle buffer is set). Resuming at step s re-reads and skips ``s x G`` blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from hf_wavepos.data.packing import collate_blocks


@dataclass(frozen=True)
class BatchPlan:
    """How one global batch is shared among processes and accumulation steps."""

    global_batch_size: int
    per_device_batch_size: int
    num_processes: int
    process_index: int

    def __post_init__(self) -> None:
        per_round = self.per_device_batch_size * self.num_processes
        if self.global_batch_size % per_round:
            raise ValueError(
                f"train.global_batch_size={self.global_batch_size} is not a multiple of "
                f"train.per_device_batch_size x processes = {self.per_device_batch_size} x {self.num_processes} "
                f"= {per_round}; change one of them so the global batch splits evenly."
            )

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimiser step on each process."""
        return self.global_batch_size // (self.per_device_batch_size * self.num_processes)

    def local_slices(self) -> list[slice]:
        """This process' micro-batches as slices of the global batch."""
        b, p, n = self.per_device_batch_size, self.process_index, self.num_processes
        return [slice((a * n + p) * b, (a * n + p + 1) * b) for a in range(self.accumulation_steps)]


class PackedBatches:
    """Micro-batches of a map-style packed dataset (``input_ids`` / ``position_ids`` columns)."""

    def __init__(self, blocks: Any, plan: BatchPlan, seed: int) -> None:
        self.blocks = blocks.with_format("numpy")
        self.plan = plan
        self.seed = seed
        self.steps_per_epoch = len(blocks) // plan.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"the training data packs into {len(blocks)} blocks, fewer than one global batch of "
                f"{plan.global_batch_size}; add documents (data.max_documents), or lower data.block_size or "
                "train.global_batch_size."
            )
        self._epoch = -1
        self._order: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = torch.randperm(len(self.blocks), generator=gen).numpy()
            self._epoch = epoch
        return self._order

    def global_indices(self, step: int) -> np.ndarray:
        """Block indices of the global batch of optimiser step ``step`` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        g = self.plan.global_batch_size
        return self._permutation(epoch)[within * g:(within + 1) * g]

    def epoch_of(self, step: int) -> int:
        """Epoch (pass over the data) that step ``step`` belongs to."""
        return step // self.steps_per_epoch

    def micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This process' micro-batches for step ``step``: (B, L) ``input_ids``, ``position_ids``, ``labels``."""
        indices = self.global_indices(step)
        return [collate_blocks(self.blocks[np.sort(indices[s])]) for s in self.plan.local_slices()]


class StreamingBatches:
    """Micro-batches of a block stream; steps must be requested in order (resume skips ahead)."""

    def __init__(self, make_stream: Callable[[int], Iterator[dict[str, np.ndarray]]], plan: BatchPlan) -> None:
        """
        Args:
            make_stream: ``make_stream(epoch)`` -> iterator of packed blocks for that pass.
            plan: the batch split.
        """
        self.make_stream = make_stream
        self.plan = plan
        self._epoch = 0
        self._stream: Iterator[dict[str, np.ndarray]] | None = None
        self._pass_blocks = 0
        self._next_step = 0

    def _take(self, count: int) -> list[dict[str, np.ndarray]]:
        out: list[dict[str, np.ndarray]] = []
        while len(out) < count:
            if self._stream is None:
                self._stream = self.make_stream(self._epoch)
                self._pass_blocks = 0
            for block in self._stream:
                out.append(block)
                self._pass_blocks += 1
                if len(out) == count:
                    break
            if len(out) < count:  # this pass is exhausted: start the next epoch
                if self._pass_blocks == 0:
                    raise ValueError(
                        "the streamed training data yields no complete block; lower data.block_size or add data."
                    )
                self._stream = None
                self._epoch += 1
        return out

    @property
    def epoch(self) -> int:
        """Pass over the stream the next block comes from."""
        return self._epoch

    def micro_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This process' micro-batches for step ``step`` (resuming: earlier steps are skipped once)."""
        if step < self._next_step:
            raise ValueError(f"streamed steps must be requested in order: asked for {step} after {self._next_step - 1}.")
        g = self.plan.global_batch_size
        if step > self._next_step:
            for _ in range(step - self._next_step):
                self._take(g)
        blocks = self._take(g)
        self._next_step = step + 1
        return [collate_blocks(blocks[s]) for s in self.plan.local_slices()]
