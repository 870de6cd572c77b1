"""Assemble a run's inputs from its config: documents, tokenizer, packed blocks, batches.

Split in two so every input error surfaces before any packing or training:
`load_documents_and_tokenizer` reads the raw splits (a missing text column fails here) and the
tokenizer; `prepare_batches` tokenises and packs.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from hf_wavepos.data.blocks import is_packed_folder, load_packed_blocks
from hf_wavepos.data.packing import iter_packed_blocks, pack_dataset
from hf_wavepos.data.sources import TextSplits, load_text_splits
from hf_wavepos.data.tokenizers import load_tokenizer, parse_tokenizer_spec
from hf_wavepos.training.batches import BatchPlan, PackedBatches, StreamingBatches
from hf_wavepos.training.experiment_config import TrainConfig

TOKENIZER_DIR = "tokenizer"
BPE_TRAINING_DOCUMENTS = 100_000
"""A ``bpe:N`` tokenizer is trained on at most this many training documents."""


def tokenizer_spec(config: TrainConfig) -> str:
    """The tokenizer a run uses: ``model.tokenizer``, else the checkpoint's, else ``"bytes"``."""
    if config.model.tokenizer is not None:
        return config.model.tokenizer
    return config.model.pretrained if config.model.pretrained is not None else "bytes"


def load_documents(config: TrainConfig) -> TextSplits:
    """The run's training and held-out documents (raises on a missing text column or split).

    A ``data.dataset`` folder of pre-packed blocks (`hf_wavepos.data.blocks`) is read as it is.
    """
    d = config.data
    if is_packed_folder(d.dataset):
        if d.streaming:
            raise ValueError(f"data.dataset={d.dataset!r} holds pre-packed blocks, which are read whole: "
                             "set data.streaming=false.")
        train, validation, description = load_packed_blocks(d.dataset, d.block_size, d.validation_size, config.train.seed)
        if d.max_documents is not None:
            train = train.select(range(min(d.max_documents, len(train))))
        return TextSplits(train, validation, description, packed=True)
    splits = load_text_splits(
        d.dataset, dataset_config=d.dataset_config, data_files=d.data_files, text_column=d.text_column,
        train_split=d.train_split, validation_split=d.validation_split, validation_size=d.validation_size,
        streaming=d.streaming, max_documents=d.max_documents, seed=config.train.seed,
    )
    if d.streaming and d.shuffle_buffer:
        splits.train = splits.train.shuffle(seed=config.train.seed, buffer_size=d.shuffle_buffer)
    return splits


def load_run_tokenizer(config: TrainConfig, splits: TextSplits, state: Any) -> Any:
    """The tokenizer, saved once under ``<output_dir>/tokenizer`` and reloaded from there on resume.

    A ``bpe:N`` tokenizer is trained by the main process only (on the first
    `BPE_TRAINING_DOCUMENTS` training documents); the others load the saved copy.

    Args:
        config: the experiment.
        splits: from `load_documents`.
        state: an `accelerate.PartialState` (process roles and barriers).
    """
    saved = Path(config.output_dir) / TOKENIZER_DIR
    spec = tokenizer_spec(config)
    kind, _ = parse_tokenizer_spec(spec)
    if splits.packed and kind != "pretrained":
        raise ValueError(
            f"data.dataset={config.data.dataset!r} holds pre-packed token ids, so model.tokenizer must name the "
            f"tokenizer folder (or Hub name) they were made with, not {spec!r}."
        )
    if state.is_main_process and not (saved / "tokenizer_config.json").is_file():
        texts = (row["text"] for row in islice(iter(splits.train), BPE_TRAINING_DOCUMENTS)) if kind == "bpe" else None
        load_tokenizer(spec, train_texts=texts).save_pretrained(str(saved))
    state.wait_for_everyone()  # every process, unconditionally: the others read what the main one wrote
    return load_tokenizer(str(saved))


@dataclass
class RunBatches:
    """Packed inputs of a run.

    Attributes:
        train: `PackedBatches` or `StreamingBatches` for the training steps.
        validation: held-out blocks (a packed `datasets.Dataset` or a list of blocks).
        num_train_blocks: packed training blocks (None when streaming).
    """

    train: Any
    validation: Any
    num_train_blocks: int | None


def prepare_batches(config: TrainConfig, splits: TextSplits, tokenizer: Any, plan: BatchPlan, state: Any) -> RunBatches:
    """Tokenise and pack both splits; wrap the training blocks in a batch source.

    Args:
        config: the experiment (data section, seed, eval size).
        splits: from `load_documents`.
        tokenizer: from `load_run_tokenizer`.
        plan: how a global batch is split among processes.
        state: an `accelerate.PartialState` (the main process packs first so others reuse the cache).
    """
    d = config.data
    options = {"add_special_tokens": d.add_special_tokens, "append_eos": d.append_eos}
    max_val = config.eval.max_blocks
    if splits.packed:
        train = PackedBatches(splits.train, plan, config.train.seed)
        validation = splits.validation.select(range(min(max_val, len(splits.validation)))).with_format("numpy")
        n_train = len(splits.train)
    elif d.streaming:
        def make_stream(epoch: int):
            if d.shuffle_buffer:
                splits.train.set_epoch(epoch)
            return iter_packed_blocks(splits.train, tokenizer, d.block_size, **options)

        train = StreamingBatches(make_stream, plan)
        validation = list(islice(iter_packed_blocks(splits.validation, tokenizer, d.block_size, **options), max_val))
        n_train = None
    else:
        with state.main_process_first():
            blocks = pack_dataset(splits.train, tokenizer, d.block_size, num_proc=d.num_proc, desc="pack train", **options)
            validation = pack_dataset(splits.validation, tokenizer, d.block_size, desc="pack validation", **options)
        validation = validation.select(range(min(max_val, len(validation)))).with_format("numpy")
        train = PackedBatches(blocks, plan, config.train.seed)
        n_train = len(blocks)
    if len(validation) < plan.num_processes:
        raise ValueError(
            f"the held-out split packs into {len(validation)} blocks of {d.block_size} tokens, fewer than the "
            f"{plan.num_processes} processes; raise data.validation_size or lower data.block_size."
        )
    return RunBatches(train, validation, n_train)
