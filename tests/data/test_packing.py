"""Document-aware packing: positions restart per document, labels and document ids follow."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hf_wavepos.data import (
    IGNORE_INDEX,
    BlockPacker,
    collate_blocks,
    document_ids_from_positions,
    tokenize_documents,
)


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
