"""Tokenizers: bytes, BPE trained here, and tokenizer specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_wavepos.data import (
    load_tokenizer,
    parse_tokenizer_spec,
    train_bpe_tokenizer,
)


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


def test_missing_sources_are_clear_errors_without_hub_lookups(tmp_path, monkeypatch):
    """The same check as `wavepos convert` / `eval`: a missing local path is refused at once (tokenizer,
    model.pretrained, distill.teacher all load through hf_wavepos.sources.loading)."""
    from hf_wavepos.training import load_config
    from hf_wavepos.training.modeling import model_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer 'runs/tok' is neither .* does not exist"):
        load_tokenizer("runs/tok")
    config = load_config(str(Path(__file__).parents[2] / "recipes/configs/tiny_cpu.yaml"),
                         ["model.pretrained=./no_checkpoint"])
    with pytest.raises(FileNotFoundError, match="model.pretrained './no_checkpoint' is neither .* does not exist"):
        model_config(config.model, None, 64)
