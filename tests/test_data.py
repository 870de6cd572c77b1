"""Data pipeline: embedded corpus, local files through `datasets`, tokenisation, document-aware packing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hf_wavepos.data import (  # noqa: E402
    IGNORE_INDEX,
    BlockPacker,
    byte_tokenizer,
    collate_blocks,
    document_ids_from_positions,
    infer_file_builder,
    iter_packed_blocks,
    load_text_splits,
    load_tokenizer,
    pack_dataset,
    parse_tokenizer_spec,
    stdlib_files,
    tokenize_documents,
    train_bpe_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


# ----------------------------------------------------------------------------- packing


def test_packer_example_from_the_docstring():
    a, b = [1, 1, 1], [2] * 7
    ids, pos = BlockPacker(8).add([a, b])
    assert ids.tolist() == [[1, 1, 1, 2, 2, 2, 2, 2]]
    assert pos.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4]]
    batch = collate_blocks([{"input_ids": ids[0], "position_ids": pos[0]}])
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 1, 1, IGNORE_INDEX, 2, 2, 2, 2]]
    assert document_ids_from_positions(batch["position_ids"]).tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]]


def test_packer_restarts_positions_at_block_boundaries_and_keeps_the_tail():
    packer = BlockPacker(4)
    ids, pos = packer.add([[5] * 6])
    assert ids.tolist() == [[5, 5, 5, 5]] and pos.tolist() == [[0, 1, 2, 3]]
    assert packer.pending_tokens == 2
    ids, pos = packer.add([[7, 7, 7]])  # the cut document continues as a new segment at position 0
    assert ids.tolist() == [[5, 5, 7, 7]] and pos.tolist() == [[0, 1, 0, 1]]
    assert packer.pending_tokens == 1


def test_packer_fed_in_pieces_equals_fed_at_once():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50, size=int(n)).tolist() for n in rng.integers(1, 40, size=30)]
    whole_ids, whole_pos = BlockPacker(16).add(docs)
    packer, ids, pos = BlockPacker(16), [], []
    for doc in docs:
        i, p = packer.add([doc])
        ids.append(i)
        pos.append(p)
    assert np.array_equal(np.concatenate(ids), whole_ids) and np.array_equal(np.concatenate(pos), whole_pos)
    assert (whole_pos.max() < 16) and (whole_pos[:, 0] == 0).all()


def test_packer_rejects_tiny_blocks():
    with pytest.raises(ValueError, match="block_size"):
        BlockPacker(1)


def test_tokenize_appends_eos_once(tok):
    ids = tokenize_documents(["ab", "c"], tok)
    assert ids == [[97, 98, tok.eos_token_id], [99, tok.eos_token_id]]
    assert tokenize_documents(["ab"], tok, append_eos=False) == [[97, 98]]


def test_collate_from_rows_and_from_columns_agree():
    rows = [{"input_ids": np.arange(6), "position_ids": np.array([0, 1, 2, 0, 1, 2])} for _ in range(2)]
    columns = {"input_ids": np.stack([r["input_ids"] for r in rows]), "position_ids": np.stack([r["position_ids"] for r in rows])}
    a, b = collate_blocks(rows), collate_blocks(columns)
    for key in ("input_ids", "position_ids", "labels"):
        assert torch.equal(a[key], b[key]) and a[key].dtype == torch.long


def test_packed_documents_give_the_logits_of_separate_runs(tok):
    """The packer's position_ids are all a wavepos model needs to keep documents apart."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import hf_wavepos

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4))
    model = hf_wavepos.apply_wavepos(model, "oka2025").eval()
    docs = tokenize_documents(["def f(x):\n    return x\n", "import os\nprint(os.sep)\n"], tok)
    n = sum(map(len, docs))
    ids, pos = BlockPacker(n).add(docs)
    batch = collate_blocks([{"input_ids": ids[0], "position_ids": pos[0]}])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = [model(input_ids=torch.tensor([d])).logits[0] for d in docs]
    torch.testing.assert_close(packed, torch.cat(alone), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- sources


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


# ----------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trips_any_text(tok):
    text = "naïve → 日本\n\tdef f(): pass\x00"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text
    assert len(tok) == 257 and tok.eos_token_id == 256


def test_bpe_tokenizer_trains_and_round_trips(tmp_path):
    texts = ["def function_name(argument):\n    return argument\n"] * 20
    bpe = train_bpe_tokenizer(texts, 300)
    ids = bpe(texts[0])["input_ids"]
    assert len(ids) < len(texts[0]) and bpe.decode(ids) == texts[0]
    bpe.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path))(texts[0])["input_ids"] == ids


def test_tokenizer_specs():
    assert parse_tokenizer_spec("bytes") == ("bytes", None)
    assert parse_tokenizer_spec("bpe:16000") == ("bpe", 16000)
    assert parse_tokenizer_spec("gpt2") == ("pretrained", None)
    with pytest.raises(ValueError, match="bpe:16000"):
        parse_tokenizer_spec("bpe:lots")
    with pytest.raises(ValueError, match="pass train_texts"):
        load_tokenizer("bpe:300")
