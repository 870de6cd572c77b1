import os

import pytest

from hf_wavepos.data import byte_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="module")
def tok():
    """The byte-level tokenizer (no training needed)."""
    return byte_tokenizer()
