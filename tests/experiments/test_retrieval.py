"""The retrieval benchmark: pre-packed blocks, code passkey samples, exact scoring, the quick run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hf_wavepos.data.blocks import is_packed_folder, load_packed_blocks, save_packed_blocks  # noqa: E402
from hf_wavepos.eval.code_passkey import ANSWER, NEEDLE, QUESTION, passkey_correct, passkey_rows  # noqa: E402
from tests.tiny_lm import tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- pre-packed blocks


def test_packed_blocks_round_trip_and_default_positions(tmp_path):
    ids = np.arange(5 * 6).reshape(5, 6)
    positions = np.tile([0, 1, 2, 0, 1, 2], (5, 1))
    save_packed_blocks(tmp_path / "a", {"input_ids": ids, "position_ids": positions}, {"input_ids": ids[:2]}, "test rows")
    assert is_packed_folder(tmp_path / "a") and not is_packed_folder(tmp_path)
    train, validation, description = load_packed_blocks(tmp_path / "a", 6, 1, seed=0)
    assert np.array_equal(np.array(train["input_ids"]), ids) and np.array_equal(np.array(train["position_ids"]), positions)
    assert np.array_equal(np.array(validation["position_ids"]), np.tile(np.arange(6), (2, 1)))  # one document per row
    assert "5 train / 2 held-out" in description and "test rows" in description
    with pytest.raises(ValueError, match=r"holds blocks of 6 tokens but data.block_size is 8; set data.block_size=6"):
        load_packed_blocks(tmp_path / "a", 8, 1, seed=0)
    with pytest.raises(ValueError, match=r"train\['input_ids'\] must be a non-empty \(N, block_size\) array"):
        save_packed_blocks(tmp_path / "b", {"input_ids": np.arange(6)})
    with pytest.raises(ValueError, match="rows of 4 tokens; other rows have 6"):
        save_packed_blocks(tmp_path / "b", {"input_ids": ids}, {"input_ids": ids[:, :4]})


def test_training_reads_pre_packed_blocks_and_needs_their_tokenizer(tmp_path):
    from accelerate.state import AcceleratorState

    from hf_wavepos.data import byte_tokenizer
    from hf_wavepos.training import load_config, train

    tok = byte_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    rng = np.random.default_rng(0)
    save_packed_blocks(tmp_path / "blocks", {"input_ids": rng.integers(3, 200, size=(40, 32))},
                       {"input_ids": rng.integers(3, 200, size=(4, 32))})
    base = ["model.size=tiny", f"data.dataset={tmp_path / 'blocks'}", "data.block_size=32", "train.max_steps=2",
            "train.global_batch_size=4", "train.per_device_batch_size=4", "log.trackers=[]", "checkpoint.every_steps=2"]
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        with pytest.raises(ValueError, match="holds pre-packed token ids, so model.tokenizer must name the tokenizer"):
            train(load_config(None, [*base, "model.tokenizer=bpe:300", f"output_dir={tmp_path / 'bad'}"]))
        result = train(load_config(None, [*base, f"model.tokenizer={tmp_path / 'tok'}", "model.position=long",
                                          f"output_dir={tmp_path / 'run'}"]))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert result.steps == 2 and np.isfinite(result.train_loss)


# ----------------------------------------------------------------------------- code passkey samples


def test_passkey_rows_have_the_documented_layout(tokenizer):
    stream = np.asarray(tokenizer((ROOT / "hf_wavepos" / "basis.py").read_text())["input_ids"])
    rows = passkey_rows(stream, tokenizer, 200, 7, np.random.default_rng(0), depths=np.linspace(0, 1, 7))
    assert rows.input_ids.shape == (7, 200)
    for i, key in enumerate(rows.keys):
        assert len(key) == 5 and key[0] != "0"
        text = tokenizer.decode(rows.input_ids[i])
        assert text.endswith(QUESTION + ANSWER.format(key=key))
        assert tokenizer.decode(rows.input_ids[i, -rows.answer_length[i]:]) == ANSWER.format(key=key)
        needle = NEEDLE.format(key=key)
        assert text.count(needle) == 1
        at = text.index(needle)
        if i == 0:  # depth 0: the needle opens the window
            assert at == 0
        if i == 6:  # depth 1: the question follows the needle
            assert text[at + len(needle):] == QUESTION + ANSWER.format(key=key)
    assert rows.depth[0] == 0 and rows.depth[-1] == 1 and np.all(np.diff(rows.needle_distance) < 0)
    with pytest.raises(ValueError, match="length=10 leaves no haystack"):
        passkey_rows(stream, tokenizer, 10, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="fewer than length=5000"):
        passkey_rows(stream[:1000], tokenizer, 5000, 1, np.random.default_rng(0))


class _Oracle(torch.nn.Module):
    """Predicts every next token of its own input (cheats on purpose), except at ``wrong`` positions:
    it checks the scorer's indexing, in which an off-by-one would turn correct samples wrong."""

    def __init__(self, vocab: int, wrong: int | None = None) -> None:
        super().__init__()
        self.vocab, self.wrong, self.anchor = vocab, wrong, torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, logits_to_keep=0):
        from types import SimpleNamespace

        b, n = input_ids.shape
        following = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)  # (b, n): token t+1 at t
        logits = torch.nn.functional.one_hot(following, self.vocab).float()
        if self.wrong is not None:
            logits[:, n - 1 - self.wrong] = torch.nn.functional.one_hot((following[:, n - 1 - self.wrong] + 1) % self.vocab, self.vocab).float()
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def test_passkey_scoring_uses_exactly_the_answer_positions(tokenizer):
    stream = np.asarray(tokenizer((ROOT / "hf_wavepos" / "basis.py").read_text())["input_ids"])
    rows = passkey_rows(stream, tokenizer, 120, 6, np.random.default_rng(1))
    vocab = len(tokenizer)
    assert passkey_correct(_Oracle(vocab), rows, batch_size=4).all()
    # wrong=k corrupts the prediction made at position L-1-k, i.e. of token L-k.
    shortest, longest = int(rows.answer_length.min()), int(rows.answer_length.max())
    assert not passkey_correct(_Oracle(vocab, wrong=1), rows, batch_size=4).any()  # the last answer token
    assert not passkey_correct(_Oracle(vocab, wrong=shortest), rows, batch_size=4).any()  # inside every answer
    assert passkey_correct(_Oracle(vocab, wrong=0), rows).all()  # the prediction after the last token is not scored
    assert passkey_correct(_Oracle(vocab, wrong=longest + 1), rows).all()  # a question token: not scored


def test_passkey_scoring_equals_greedy_generation(tokenizer):
    """On a real (random) wavelet model: a row is correct exactly when cached greedy decoding of its
    prompt emits its answer tokens. Rows 0-2 get the model's own continuation as answer (True)."""
    from hf_wavepos import apply_wavepos

    stream = np.asarray(tokenizer((ROOT / "hf_wavepos" / "basis.py").read_text())["input_ids"])
    rows = passkey_rows(stream, tokenizer, 90, 6, np.random.default_rng(2), key_digits=2)
    model = apply_wavepos(tiny_llama(len(tokenizer), seed=3), "long").eval()

    def greedy(i: int) -> np.ndarray:
        n = int(rows.answer_length[i])
        ids = torch.as_tensor([rows.input_ids[i, :-n].tolist()])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
        return out[0, ids.shape[1]:].numpy()

    for i in range(3):
        rows.input_ids[i, -rows.answer_length[i]:] = greedy(i)
    scored = passkey_correct(model, rows, batch_size=4)
    expected = [np.array_equal(greedy(i), rows.input_ids[i, -rows.answer_length[i]:]) for i in range(6)]
    assert scored.tolist() == expected
    assert scored[:3].all() and not scored[3:].all()


# ----------------------------------------------------------------------------- the benchmark


def test_retrieval_configs_validate(tmp_path):
    from hf_wavepos.experiments.retrieval import RetrievalConfig

    for name in ("retrieval_cpu.yaml", "retrieval_gpu.yaml"):
        config = RetrievalConfig.from_yaml(ROOT / "hf_wavepos" / "experiments" / "configs" / name)  # a path
        assert config.lengths[-1] == 16 * config.block_size and "long" in config.methods and "alibi" in config.methods
    with pytest.raises(ValueError, match=r"passkey_fraction=1.5 must be in \(0, 1\)"):
        RetrievalConfig(passkey_fraction=1.5)
    with pytest.raises(ValueError, match="samples_per_length=0 must be a positive integer"):
        RetrievalConfig(samples_per_length=0)


@pytest.mark.slow
def test_bench_retrieval_quick(tmp_path, capsys):
    from hf_wavepos.cli import main

    assert main(["bench", "retrieval", "--quick", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "retrieval.json").read_text())
    assert set(summary["accuracy"]) == {"rope", "long"} and summary["lengths"] == [48, 96]
    for by_length in summary["accuracy"].values():
        assert set(by_length) == {"48", "96"} and all(0 <= a <= 1 for a in by_length.values())
    assert summary["training_rows"]["passkey_rows"] == summary["training_rows"]["corpus_blocks"]  # 50% mix
    assert (tmp_path / "retrieval.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "retrieval.csv").read_text().splitlines()) == 1 + 2 * 2 * 4
    assert "96 (2x)" in capsys.readouterr().out


def test_bench_retrieval_unknown_method_is_a_clear_error(tmp_path, capsys):
    from hf_wavepos.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "retrieval", "--quick", "--methods", "rope,wavelets", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "methods ['wavelets'] are unknown; allowed values: nope, rope" in capsys.readouterr().err
    assert not (tmp_path / "tokenizer").exists()  # nothing was trained
