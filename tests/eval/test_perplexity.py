"""Perplexity vs length: the package's numbers equal a hand computation on a tiny model."""

import json
import math
import socket

import pytest
import torch
import torch.nn.functional as F

from hf_wavepos.eval.perplexity import perplexity_by_length, perplexity_report, perplexity_windows
from hf_wavepos.eval.report import write_perplexity
from tests.tiny_lm import STDLIB, tiny_gpt2


@pytest.fixture(scope="module")
def docs(tokenizer):
    """Token ids of four real documents of 40, 70, 100 and 130 tokens."""
    text = (STDLIB / "textwrap.py").read_text()
    ids = tokenizer(text)["input_ids"]
    return [ids[i * 200 : i * 200 + n] for i, n in enumerate((40, 70, 100, 130))]


def hand_full(model, docs, length):
    """exp(token-weighted mean NLL) over the first `length` tokens of docs with >= length tokens."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            if len(doc) < length:
                continue
            ids = torch.tensor([doc[:length]])
            logits = model(ids).logits[0]
            nll += F.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum").item()
            count += length - 1
    return math.exp(nll / count), count


def hand_sliding(model, docs, length, stride):
    """The transformers perplexity guide's loop (labels masked with -100), per document."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            if len(doc) < length:
                continue
            seq = torch.tensor([doc])
            prev_end = 0
            for begin in range(0, len(doc), stride):
                end = min(begin + length, len(doc))
                trg_len = end - prev_end
                input_ids = seq[:, begin:end]
                labels = input_ids.clone()
                labels[:, :-trg_len] = -100
                loss = model(input_ids, labels=labels).loss  # mean over the shifted, unmasked labels
                valid = (labels[:, 1:] != -100).sum().item()
                nll += loss.item() * valid
                count += valid
                prev_end = end
                if end == len(doc):
                    break
    return math.exp(nll / count), count


def test_full_sequence_equals_hand_computation_and_skips_short_documents(llama, docs):
    with pytest.warns(UserWarning) as caught:
        rows = perplexity_by_length(llama, docs, [32, 64, 96], show_progress=False)
    assert [str(w.message) for w in caught] == [
        "1 of 4 documents are shorter than 64 tokens and are skipped at that length",
        "2 of 4 documents are shorter than 96 tokens and are skipped at that length",
    ]
    assert [r.length for r in rows] == [32, 64, 96]
    assert [r.num_documents for r in rows] == [4, 3, 2]
    assert [r.skipped_documents for r in rows] == [0, 1, 2]
    for row in rows:
        expected, count = hand_full(llama, docs, row.length)
        assert row.num_tokens == count
        assert row.perplexity == pytest.approx(expected, rel=1e-5)
    # a random model over a 1000-token vocabulary: near-uniform predictions
    assert 500 < rows[0].perplexity < 2000


def test_sliding_window_equals_transformers_guide_loop(llama, docs):
    with pytest.warns(UserWarning, match="1 of 4 documents are shorter than 64"):
        rows = perplexity_by_length(llama, docs, [32, 64], mode="sliding", stride=24, show_progress=False)
    for row in rows:
        expected, count = hand_sliding(llama, docs, row.length, 24)
        assert row.num_tokens == count
        # every token after the first is scored exactly once
        assert count == sum(len(d) - 1 for d in docs if len(d) >= row.length)
        assert row.perplexity == pytest.approx(expected, rel=1e-5)


def test_windows_cover_each_token_once():
    doc = list(range(103))
    for length, stride in ((32, 7), (50, 1), (32, 31)):
        windows = perplexity_windows(doc, length, "sliding", stride)
        assert all(len(w.ids) <= length for w in windows)
        assert sum(w.num_targets for w in windows) == len(doc) - 1
        assert windows[-1].ids[-1] == doc[-1]
    # stride == length: non-overlapping chunks; each chunk's first token has no context (as in the guide)
    chunks = perplexity_windows(doc, 32, "sliding", 32)
    assert [len(w.ids) for w in chunks] == [32, 32, 32, 7]
    assert [w.num_targets for w in chunks] == [31, 31, 31, 6]
    (full,) = perplexity_windows(doc, 40, "full")
    assert full.ids == tuple(range(40)) and full.num_targets == 39


def test_batching_and_texts_give_the_same_numbers(llama, tokenizer, docs):
    one = perplexity_by_length(llama, docs[1:], [32, 64], batch_size=1, show_progress=False)
    three = perplexity_by_length(llama, docs[1:], [32, 64], batch_size=3, show_progress=False)
    assert [r.perplexity for r in one] == pytest.approx([r.perplexity for r in three], rel=1e-5)
    texts = [tokenizer.decode(d) for d in docs[1:]]
    from_texts = perplexity_by_length(llama, texts, [32], tokenizer=tokenizer, show_progress=False)
    expected, _ = hand_full(llama, [tokenizer(t)["input_ids"] for t in texts], 32)
    assert from_texts[0].perplexity == pytest.approx(expected, rel=1e-5)


def test_too_short_or_bad_inputs_are_clear_errors(llama, docs, tokenizer):
    with pytest.raises(ValueError, match=r"no document reaches length 500 tokens \(the longest has 130\)"):
        perplexity_by_length(llama, docs, [64, 500], show_progress=False)
    with pytest.raises(ValueError, match="stride=None must be set for mode='sliding'"):
        perplexity_by_length(llama, docs, [32], mode="sliding", show_progress=False)
    with pytest.raises(ValueError, match="stride=40 must be set"):
        perplexity_by_length(llama, docs, [32], mode="sliding", stride=40, show_progress=False)
    with pytest.raises(ValueError, match="mode='chunks' is not one of"):
        perplexity_by_length(llama, docs, [32], mode="chunks", show_progress=False)
    with pytest.raises(ValueError, match="tokenizer is required"):
        perplexity_by_length(llama, ["some text"], [32], show_progress=False)
    with pytest.raises(ValueError, match="documents is empty"):
        perplexity_by_length(llama, [], [32], show_progress=False)


def test_report_of_two_models_writes_json_csv_and_png(llama, tokenizer, docs, tmp_path):
    gpt2 = tiny_gpt2(len(tokenizer))
    texts = [tokenizer.decode(d) for d in docs[1:]]
    models = ((label, m, tokenizer) for label, m in (("llama", llama), ("gpt2", gpt2)))  # loaded lazily
    with pytest.warns(UserWarning):
        report = perplexity_report(models, texts, [32, 64, 96], source="test", show_progress=False)
    assert set(report["results"]) == {"llama", "gpt2"}
    expected, _ = hand_full(gpt2, [tokenizer(t)["input_ids"] for t in texts], 64)
    assert report["results"]["gpt2"][1]["perplexity"] == pytest.approx(expected, rel=1e-5)
    files = write_perplexity(report, tmp_path, train_length=64)
    assert [f.name for f in files] == ["perplexity.json", "perplexity.csv", "perplexity.png"]
    assert json.loads((tmp_path / "perplexity.json").read_text()) == report
    lines = (tmp_path / "perplexity.csv").read_text().splitlines()
    assert lines[0].startswith("model,length,perplexity") and len(lines) == 1 + 2 * 3
    png = (tmp_path / "perplexity.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["evaluations"]["perplexity"]["files"] == ["perplexity.json", "perplexity.csv", "perplexity.png"]
    assert manifest["evaluations"]["perplexity"]["summary"]["gpt2"]["64"] == pytest.approx(expected, rel=1e-5)


def test_metric_module_loads_offline_and_matches(llama, tokenizer, docs, monkeypatch):
    import evaluate

    from hf_wavepos.eval.metrics import metric_path

    def no_network(*args, **kwargs):
        raise AssertionError("the metric tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    metric = evaluate.load(metric_path("long_perplexity"))
    texts = [tokenizer.decode(d) for d in docs]
    with pytest.warns(UserWarning, match="shorter than 96"):
        out = metric.compute(predictions=texts, model=llama, tokenizer=tokenizer, lengths=[32, 96])
    direct = [hand_full(llama, [tokenizer(t)["input_ids"] for t in texts], n)[0] for n in (32, 96)]
    assert out["lengths"] == [32, 96]
    assert out["perplexities"] == pytest.approx(direct, rel=1e-5)
    sliding = metric.compute(predictions=texts, model=llama, tokenizer=tokenizer, lengths=[32], mode="sliding", stride=16)
    assert sliding["perplexities"][0] == pytest.approx(
        hand_sliding(llama, [tokenizer(t)["input_ids"] for t in texts], 32, 16)[0], rel=1e-5)


def test_wavepos_model_full_and_sliding_equal_hand_computation(tokenizer, docs):
    from hf_wavepos import apply_wavepos
    from tests.tiny_lm import tiny_llama
    model = apply_wavepos(tiny_llama(len(tokenizer), seed=2), "long")
    assert model.config.model_type == "wavepos_llama"
    long_docs = docs[2:]  # 100 and 130 tokens
    full = perplexity_by_length(model, long_docs, [48, 96], show_progress=False)
    assert [r.perplexity for r in full] == pytest.approx([hand_full(model, long_docs, n)[0] for n in (48, 96)], rel=1e-5)
    sliding = perplexity_by_length(model, long_docs, [48], mode="sliding", stride=20, show_progress=False)
    assert sliding[0].perplexity == pytest.approx(hand_sliding(model, long_docs, 48, 20)[0], rel=1e-5)


def test_stdlib_heldout_source_is_the_recipes_validation_split():
    from hf_wavepos.data import load_text_splits
    from hf_wavepos.eval.texts import load_texts

    held_out = load_texts("stdlib-heldout:5:3")
    assert len(held_out) == 5
    train = load_text_splits("stdlib", validation_size=5, seed=3, max_documents=50).train["text"]
    assert not set(held_out) & set(train)
    with pytest.raises(ValueError, match="write stdlib-heldout:N or stdlib-heldout:N:SEED"):
        load_texts("stdlib-heldout")
