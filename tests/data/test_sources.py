"""Text sources: the embedded stdlib corpus and local files through `datasets`, split train / held-out."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_wavepos.data import (
    infer_file_builder,
    iter_packed_blocks,
    load_text_splits,
    pack_dataset,
    stdlib_files,
)


def test_stdlib_splits_are_disjoint_and_streaming_reads_the_same_documents():
    splits = load_text_splits(max_documents=5, validation_size=3)
    assert len(splits.train) == 5 and len(splits.validation) == 3
    assert splits.train.column_names == ["text"]
    assert not set(splits.train["text"]) & set(splits.validation["text"])
    streamed = load_text_splits(max_documents=5, validation_size=3, streaming=True)
    assert [r["text"] for r in streamed.train] == splits.train["text"]
    assert [r["text"] for r in streamed.validation] == splits.validation["text"]


def test_stdlib_file_order_is_seeded():
    assert stdlib_files(4, seed=0) == stdlib_files(4, seed=0) != stdlib_files(4, seed=1)
    with pytest.raises(ValueError, match="max_documents"):
        stdlib_files(0)


@pytest.fixture()
def local_files(tmp_path):
    docs = [f"document {i}\n" + "x = 1\n" * (i + 1) for i in range(12)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"content": d, "n": i}) + "\n" for i, d in enumerate(docs)))
    texts = []
    for i, d in enumerate(docs):
        path = tmp_path / "txt" / f"doc{i:02d}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(d)
        texts.append(str(path))
    import datasets

    parquet = tmp_path / "docs.parquet"
    datasets.Dataset.from_dict({"content": docs}).to_parquet(str(parquet))
    return {"docs": docs, "jsonl": str(jsonl), "txt": sorted(texts), "parquet": str(parquet)}


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "txt"])
@pytest.mark.parametrize("streaming", [False, True])
def test_local_files_load_one_document_per_row(local_files, kind, streaming):
    column = "text" if kind == "txt" else "content"
    splits = load_text_splits(data_files=local_files[kind], text_column=column, validation_size=2, streaming=streaming)
    train = [r["text"] for r in splits.train]
    val = [r["text"] for r in splits.validation]
    assert sorted(train + val) == sorted(local_files["docs"])  # whole documents (text files: one per file)
    assert len(val) == 2


def test_an_explicit_validation_split_is_used(local_files):
    files = {"train": local_files["txt"][:9], "validation": local_files["txt"][9:]}
    splits = load_text_splits("text", data_files=files)
    assert len(splits.train) == 9 and len(splits.validation) == 3
    assert "split 'validation'" in splits.description


def test_missing_text_column_is_a_clear_error(local_files):
    for streaming in (False, True):
        with pytest.raises(ValueError, match=r"text_column='body' is not a column.*\['content', 'n'\]"):
            load_text_splits(data_files=local_files["jsonl"], text_column="body", validation_size=2, streaming=streaming)
    with pytest.raises(ValueError, match="does not hold text"):
        load_text_splits(data_files=local_files["jsonl"], text_column="n", validation_size=2)


def test_bad_source_arguments_are_clear_errors(local_files):
    with pytest.raises(ValueError, match="cannot tell the format"):
        infer_file_builder(["a.docx"])
    with pytest.raises(ValueError, match="mixes formats"):
        infer_file_builder(["a.jsonl", "b.parquet"])
    assert infer_file_builder({"train": ["x.jsonl.gz"]}) == "json"
    with pytest.raises(ValueError, match="number of documents"):
        load_text_splits(validation_size=0.1, streaming=True)
    with pytest.raises(ValueError, match="set data.data_files"):
        load_text_splits("json")
    with pytest.raises(ValueError, match="no split 'dev'"):
        load_text_splits(data_files=local_files["jsonl"], text_column="content", train_split="dev")


def test_pack_dataset_matches_the_streaming_packer(local_files, tok):
    splits = load_text_splits(data_files=local_files["jsonl"], text_column="content", validation_size=2)
    blocks = pack_dataset(splits.train, tok, 16, desc="test")
    streamed = list(iter_packed_blocks(splits.train, tok, 16))
    assert len(blocks) == len(streamed) > 10
    assert np.array_equal(np.array(blocks["input_ids"]), np.stack([b["input_ids"] for b in streamed]))
    assert np.array_equal(np.array(blocks["position_ids"]), np.stack([b["position_ids"] for b in streamed]))
