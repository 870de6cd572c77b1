import os

import pytest
import torch

from tests.tiny_lm import tiny_llama, train_tokenizer

# Triton kernels run on CPU through the interpreter, which must be on before triton is first
# imported (importing hf_wavepos imports it through torch._dynamo).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny BPE tokenizer of `tests.tiny_lm.train_tokenizer` (1000 tokens, EOS id 0)."""
    return train_tokenizer()


@pytest.fixture(scope="session")
def llama(tokenizer):
    """A tiny random stock Llama sized for ``tokenizer``."""
    return tiny_llama(len(tokenizer))
