"""The test helpers of `tests.tiny_lm` do what the other tests rely on."""

from tests.tiny_lm import STDLIB


def test_fixture_tokenizer_round_trips_and_compresses(tokenizer):
    text = (STDLIB / "textwrap.py").read_text()[:2000]
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2  # BPE merges: fewer tokens than bytes
    assert tokenizer.eos_token_id == 0 and len(tokenizer) == 1000
