"""Tokenise documents and pack them into fixed-length blocks that keep document boundaries.

A block is ``block_size`` consecutive tokens of the concatenated documents. Alongside its
``input_ids`` it carries ``position_ids`` that restart at 0 at every document start *and* at the
block start (a document cut by a block boundary continues in the next block as a new segment, so
positions never exceed ``block_size - 1``; learned absolute positions stay in range). From the
positions follow, with no extra storage:

- ``labels``: the input ids with -100 wherever ``position_ids == 0``, so no token is trained to
  predict across a document boundary (models shift labels by one internally);
- ``document_ids``: 0, 1, 2, ... per segment of a block, so attention can be restricted to one
  document (`hf_wavepos.positions.document_ids_from_positions`, the rule the wavepos models use).

Example with block_size 8 and documents [a a a] [b b b b b b b] (``|`` marks a block boundary)::

    input_ids     a a a b b b b b | b b ...
    position_ids  0 1 2 0 1 2 3 4 | 0 1 ...
    document_ids  0 0 0 1 1 1 1 1 | 0 0 ...
    labels        - a a - b b b b | - b ...        (- is -100)
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch


IGNORE_INDEX = -100
"""Label value that `torch.nn.functional.cross_entropy` and transformers' losses skip."""


def block_positions(starts: np.ndarray) -> np.ndarray:
    """Position of every token since the latest segment start.

    Args:
        starts: (N, L) bool, True where a document starts. Column 0 is treated as a start.

    Returns:
        (N, L) int64 positions, 0 at every start.
    """
    starts = np.array(starts, dtype=bool, copy=True)
    starts[:, 0] = True
    index = np.broadcast_to(np.arange(starts.shape[1]), starts.shape)
    last_start = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    return (index - last_start).astype(np.int64)


class BlockPacker:
    """Streaming packer: feed token lists, receive complete blocks.

    Tokens left over after the last complete block wait in a buffer for the next documents; the
    final partial block is dropped (`pending_tokens` says how many tokens that is).
    """

    def __init__(self, block_size: int) -> None:
        if not isinstance(block_size, int) or block_size < 2:
            raise ValueError(f"block_size must be an integer >= 2, got {block_size!r}.")
        self.block_size = block_size
        self._ids: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self.pending_tokens = 0

    def add(self, token_lists: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Append documents; return the blocks completed so far.

        Args:
            token_lists: one token-id sequence per document (empty ones are skipped).

        Returns:
            ``(input_ids, position_ids)``, both (N, block_size) int64; N may be 0.
        """
        for tokens in token_lists:
            if len(tokens) == 0:
                continue
            ids = np.asarray(tokens, dtype=np.int64)
            start = np.zeros(len(ids), dtype=bool)
            start[0] = True
            self._ids.append(ids)
            self._starts.append(start)
            self.pending_tokens += len(ids)
        n_blocks = self.pending_tokens // self.block_size
        if n_blocks == 0:
            return np.zeros((0, self.block_size), np.int64), np.zeros((0, self.block_size), np.int64)
        ids = np.concatenate(self._ids)
        starts = np.concatenate(self._starts)
        used = n_blocks * self.block_size
        self._ids, self._starts = [ids[used:]], [starts[used:]]
        self.pending_tokens -= used
        starts = starts[:used].reshape(n_blocks, self.block_size)
        return ids[:used].reshape(n_blocks, self.block_size), block_positions(starts)


def tokenize_documents(
    texts: Sequence[str], tokenizer: Any, *, add_special_tokens: bool = True, append_eos: bool = True
) -> list[list[int]]:
    """Token ids of each text with the model's tokenizer.

    Args:
        texts: documents.
        tokenizer: a transformers tokenizer (called with ``add_special_tokens``; long texts are
            not truncated).
        add_special_tokens: let the tokenizer add its usual markers (e.g. Llama's BOS).
        append_eos: end every document with ``tokenizer.eos_token_id`` (when the tokenizer has one
            and has not added it already).

    Returns:
        One list of ids per text.
    """
    encoded = tokenizer(list(texts), add_special_tokens=add_special_tokens, verbose=False)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    if append_eos and eos is not None:
        encoded = [ids if ids and ids[-1] == eos else list(ids) + [eos] for ids in encoded]
    return [list(ids) for ids in encoded]


def pack_dataset(
    dataset: Any,
    tokenizer: Any,
    block_size: int,
    *,
    add_special_tokens: bool = True,
    append_eos: bool = True,
    batch_size: int = 1000,
    num_proc: int | None = None,
    desc: str = "tokenise and pack",
) -> Any:
    """Map-style `datasets.Dataset` of documents -> `datasets.Dataset` of packed blocks.

    Documents are packed in groups of ``batch_size`` (the `datasets.map` batch): each group's
    last partial block is dropped, at most one block per group.

    Args:
        dataset: rows with a ``"text"`` column (see `hf_wavepos.data.sources.load_text_splits`).
        tokenizer: the model's tokenizer.
        block_size: tokens per block.
        add_special_tokens, append_eos: see `tokenize_documents`.
        batch_size: documents per packing group.
        num_proc: worker processes for tokenisation (None: in process).
        desc: progress-bar label.

    Returns:
        Dataset with columns ``input_ids`` and ``position_ids`` (each a list of ``block_size`` ints).
    """
    if "text" not in dataset.column_names:
        raise ValueError(f"pack_dataset needs a 'text' column; the dataset has {dataset.column_names}.")

    def pack_group(batch: dict[str, list]) -> dict[str, list]:
        packer = BlockPacker(block_size)
        ids, pos = packer.add(
            tokenize_documents(batch["text"], tokenizer, add_special_tokens=add_special_tokens, append_eos=append_eos)
        )
        return {"input_ids": ids.astype(np.int32).tolist(), "position_ids": pos.astype(np.int32).tolist()}

    return dataset.map(
        pack_group, batched=True, batch_size=batch_size, num_proc=num_proc,
        remove_columns=dataset.column_names, desc=desc,
    )


def iter_packed_blocks(
    dataset: Iterable[dict[str, Any]],
    tokenizer: Any,
    block_size: int,
    *,
    add_special_tokens: bool = True,
    append_eos: bool = True,
    documents_per_call: int = 64,
) -> Iterator[dict[str, np.ndarray]]:
    """Packed blocks of a streamed dataset, lazily, in document order.

    Args:
        dataset: an iterable of rows with a ``"text"`` field (e.g. a `datasets.IterableDataset`).
        tokenizer, block_size, add_special_tokens, append_eos: as in `pack_dataset`.
        documents_per_call: documents tokenised together.

    Yields:
        ``{"input_ids": (block_size,) int64, "position_ids": (block_size,) int64}``.
    """
    packer = BlockPacker(block_size)
    texts: list[str] = []

    def flush() -> Iterator[dict[str, np.ndarray]]:
        ids, pos = packer.add(
            tokenize_documents(texts, tokenizer, add_special_tokens=add_special_tokens, append_eos=append_eos)
        )
        texts.clear()
        for row_ids, row_pos in zip(ids, pos):
            yield {"input_ids": row_ids, "position_ids": row_pos}

    for row in dataset:
        texts.append(row["text"])
        if len(texts) >= documents_per_call:
            yield from flush()
    if texts:
        yield from flush()


def labels_from_positions(input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Training labels: ``input_ids`` with `IGNORE_INDEX` at every segment start.

    Args:
        input_ids: (B, L) token ids.
        position_ids: (B, L) positions restarting at 0 per document.

    Returns:
        (B, L) labels (unshifted, as transformers' causal-LM losses expect).
    """
    return input_ids.masked_fill(position_ids == 0, IGNORE_INDEX)


def collate_blocks(rows: Sequence[dict[str, Any]] | dict[str, Any]) -> dict[str, torch.Tensor]:
    """Stack packed blocks into a model batch.

    Args:
        rows: a list of ``{"input_ids", "position_ids"}`` rows, or one dict of stacked columns
            (what ``dataset[indices]`` returns).

    Returns:
        ``{"input_ids", "position_ids", "labels"}``, each a (B, L) int64 tensor.
    """
    if isinstance(rows, dict):
        input_ids = torch.as_tensor(np.asarray(rows["input_ids"]), dtype=torch.long)
        position_ids = torch.as_tensor(np.asarray(rows["position_ids"]), dtype=torch.long)
    else:
        input_ids = torch.as_tensor(np.stack([np.asarray(r["input_ids"]) for r in rows]), dtype=torch.long)
        position_ids = torch.as_tensor(np.stack([np.asarray(r["position_ids"]) for r in rows]), dtype=torch.long)
    if input_ids.shape != position_ids.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and position_ids {tuple(position_ids.shape)} must both be (B, L)."
        )
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels_from_positions(input_ids, position_ids)}
