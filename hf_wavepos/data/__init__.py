"""Training data: the embedded corpus, `datasets` loading, tokenisation and document-aware packing.

    splits = load_text_splits()                                  # Python stdlib source, held-out split
    blocks = pack_dataset(splits.train, tokenizer, block_size=512)   # input_ids + position_ids
    batch = collate_blocks(blocks[:8])                           # + labels (-100 at document starts)
"""

from hf_wavepos.data.corpus import STDLIB_NAME, iter_stdlib_documents, stdlib_files, stdlib_root
from hf_wavepos.data.packing import (
    IGNORE_INDEX,
    BlockPacker,
    block_positions,
    collate_blocks,
    iter_packed_blocks,
    labels_from_positions,
    pack_dataset,
    tokenize_documents,
)
from hf_wavepos.data.sources import TextSplits, infer_file_builder, load_text_splits
from hf_wavepos.data.tokenizers import byte_tokenizer, load_tokenizer, parse_tokenizer_spec, train_bpe_tokenizer
from hf_wavepos.positions import document_ids_from_positions  # the one rule, shared with the models

__all__ = [
    "IGNORE_INDEX",
    "STDLIB_NAME",
    "BlockPacker",
    "TextSplits",
    "block_positions",
    "byte_tokenizer",
    "collate_blocks",
    "document_ids_from_positions",
    "infer_file_builder",
    "iter_packed_blocks",
    "iter_stdlib_documents",
    "labels_from_positions",
    "load_text_splits",
    "load_tokenizer",
    "pack_dataset",
    "parse_tokenizer_spec",
    "stdlib_files",
    "stdlib_root",
    "tokenize_documents",
    "train_bpe_tokenizer",
]
