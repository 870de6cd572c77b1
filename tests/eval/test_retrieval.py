"""Passkey and needle tasks: keys land at the requested depth in real text; scoring is exact."""

import json
import random

import pytest

from hf_wavepos.eval.haystack import CLASSIC_FILLER, Haystack, haystack_sentences, split_sentences
from hf_wavepos.eval.needle import NEEDLE, needle_layout, run_needle, score_needle
from hf_wavepos.eval.passkey import make_passkey_sample, run_passkey
from hf_wavepos.eval.report import write_retrieval
from hf_wavepos.eval.scoring import retrieval_exact


@pytest.fixture(scope="module")
def haystack(tokenizer):
    return Haystack(tokenizer, haystack_sentences("debian-faq"))


def test_haystack_is_real_text():
    sentences = haystack_sentences("debian-faq")
    assert len(sentences) > 1000
    text = " ".join(sentences)
    assert "Debian" in text and "lorem" not in text.lower()
    assert all(len(s.split()) <= 20 for s in sentences)
    assert haystack_sentences("classic") == split_sentences(CLASSIC_FILLER)
    assert any("module" in s for s in haystack_sentences("stdlib-docstrings")[:200])


@pytest.mark.parametrize("length", [300, 1000])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_passkey_sits_at_the_requested_depth(haystack, tokenizer, length, depth):
    sample = make_passkey_sample(haystack, length, depth, "48213", offset=11)
    prompt = sample.prompt
    ids = prompt.input_ids
    assert length - 20 <= len(ids) <= length  # filled to the last whole word that fits
    start = prompt.needle_starts[0]
    assert tokenizer.decode(ids[start:]).startswith(" The pass key is 48213. Remember it. 48213 is the pass key.")
    assert "48213" not in tokenizer.decode(ids[:start])
    # nearest sentence boundary: within one (at most 20-word) sentence of the requested depth
    longest = max(haystack.lengths)
    assert abs(prompt.depths[0] - depth) <= longest / prompt.haystack_tokens + 0.01
    assert tokenizer.decode(ids).endswith("What is the pass key? The pass key is")


def test_prompt_too_short_for_the_question_is_a_clear_error(haystack):
    with pytest.raises(ValueError, match="context_length=20 leaves no room for haystack text"):
        make_passkey_sample(haystack, 20, 0.5, "12345")
    with pytest.raises(ValueError, match="needle depth 1.5 is outside"):
        make_passkey_sample(haystack, 300, 1.5, "12345")


def test_passkey_run_scores_exactly_and_writes_heatmaps(llama, tokenizer, tmp_path):
    result = run_passkey(llama, tokenizer, [128, 256], [0.0, 0.5], num_samples=2, seed=3, show_progress=False)
    rows = result["samples"]
    assert len(rows) == 2 * 2 * 2
    assert len({r["key"] for r in rows}) == len(rows)
    for row in rows:
        assert row["correct"] == retrieval_exact(row["output"], row["key"])
        assert row["prompt_tokens"] <= row["length"]
    cell = [r["correct"] for r in rows if r["length"] == 256 and r["depth"] == 0.5]
    assert result["accuracy"][1][1] == sum(cell) / 2
    again = run_passkey(llama, tokenizer, [128], [0.0], num_samples=2, seed=3, show_progress=False)
    assert again["samples"] == rows[:2]  # seeded and greedy: reproducible
    files = write_retrieval({"tiny": result}, tmp_path, "passkey")
    assert [f.name for f in files] == ["passkey.json", "passkey.csv", "passkey_tiny.png"]
    png = (tmp_path / "passkey_tiny.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 5_000
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["evaluations"]["passkey"]["summary"]["tiny"]["mean"] == result["mean_accuracy"]


def test_needle_layouts_and_scores():
    rng = random.Random(0)
    assert needle_layout("single", 0.3, 1, rng) == [0.3]
    assert needle_layout("multi", 0.4, 3, rng) == pytest.approx([0.4, 0.6, 0.8])
    distractor = needle_layout("distractor", 0.5, 4, rng)
    assert distractor[0] == 0.5 and len(distractor) == 4 and all(0 <= d <= 1 for d in distractor)
    assert score_needle("single", "4837201.", ["4837201"]) == 1.0
    assert score_needle("distractor", "1111111 then 4837201", ["4837201", "1111111"]) == 0.0
    assert score_needle("multi", "1111111, 4837201 and 2", ["4837201", "1111111", "5555555"]) == pytest.approx(2 / 3)


def test_multi_needles_each_at_their_depth(haystack, tokenizer):
    depths = [0.2, 0.5, 0.8]
    needles = [(d, NEEDLE.format(key=k, value=v)) for d, k, v in zip(depths, ("Oslo", "Lima", "Riga"), ("1111111", "2222222", "3333333"))]
    prompt = haystack.build_prompt(1500, needles[::-1], "Intro.", " Question?", offset=5)
    for (depth, text), start, actual in zip(needles[::-1], prompt.needle_starts, prompt.depths):
        assert tokenizer.decode(prompt.input_ids[start:]).startswith(" " + text)
        assert abs(actual - depth) <= max(haystack.lengths) / prompt.haystack_tokens + 0.01


@pytest.mark.parametrize("variant", ["single", "multi", "distractor"])
def test_needle_variants_run_and_write(llama, tokenizer, variant, tmp_path):
    result = run_needle(llama, tokenizer, [256, 384], [0.0, 1.0], variant=variant, num_needles=3, num_samples=1,
                        seed=1, show_progress=False)
    assert result["variant"] == variant and len(result["score"]) == 2 and len(result["score"][0]) == 2
    for row in result["samples"]:
        assert row["score"] == score_needle(variant, row["output"], row["values"])
        assert len(row["values"]) == (1 if variant == "single" else 3)
    files = write_retrieval({"tiny": result}, tmp_path, f"needle_{variant}")
    assert files[-1].name == f"needle_{variant}_tiny.png" and files[-1].stat().st_size > 5_000
    with pytest.raises(ValueError, match="variant='haystack' is not one of"):
        run_needle(llama, tokenizer, [256], [0.5], variant="haystack")
