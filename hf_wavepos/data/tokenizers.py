"""Tokenizers for training from scratch without the Hub, and one loader for every kind.

`load_tokenizer` accepts:

- ``"bytes"``: one token per UTF-8 byte (256 ids) plus ``<|endoftext|>`` (id 256). Needs no
  data and no network; the tiny CPU configs use it.
- ``"bpe:N"``: a byte-level BPE tokenizer with a vocabulary of N, trained on the given texts
  (the project's calibration used 16k trained on the Python standard library source).
- anything else: a Hub name or a local folder for `transformers.AutoTokenizer`.

Every result is a transformers fast tokenizer, so ``save_pretrained`` puts it next to the model.
"""

from __future__ import annotations

from typing import Any, Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

END_OF_TEXT = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    # Byte-level BPE represents each byte by a printable character: printable Latin-1 bytes map to
    # themselves, the other 68 to code points from 256 upward (the GPT-2 convention, which the
    # `tokenizers` ByteLevel pre-tokenizer and decoder expect).
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _wrap(tokenizer: Tokenizer) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT, pad_token=END_OF_TEXT,
        model_max_length=int(1e30),
    )


def byte_tokenizer() -> Any:
    """A transformers fast tokenizer with one id per byte (0-255) and ``<|endoftext|>`` = 256."""
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # no merges: splitting is moot
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([END_OF_TEXT])
    return _wrap(tok)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """Train a byte-level BPE tokenizer.

    Args:
        texts: training documents (read once).
        vocab_size: final vocabulary size including the 256 byte tokens and ``<|endoftext|>``.

    Returns:
        A transformers fast tokenizer; ``<|endoftext|>`` is id 0 and serves as EOS/BOS/pad.
    """
    if not isinstance(vocab_size, int) or vocab_size < 258:
        raise ValueError(f"BPE vocab_size must be an integer >= 258 (256 bytes + 1 special + 1 merge), got {vocab_size!r}.")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[END_OF_TEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def parse_tokenizer_spec(spec: str) -> tuple[str, int | None]:
    """Split a tokenizer spec into ``(kind, vocab_size)``: ("bytes", None), ("bpe", N) or ("pretrained", None)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"tokenizer must be 'bytes', 'bpe:<vocab size>', a Hub name or a folder, got {spec!r}.")
    if spec == "bytes":
        return "bytes", None
    if spec.startswith("bpe:"):
        size = spec[4:]
        if not size.isdigit():
            raise ValueError(f"tokenizer={spec!r}: write the BPE vocabulary size as a number, e.g. 'bpe:16000'.")
        return "bpe", int(size)
    return "pretrained", None


def load_tokenizer(spec: str, *, train_texts: Iterable[str] | None = None) -> Any:
    """The tokenizer named by ``spec`` (see the module docstring).

    Args:
        spec: ``"bytes"``, ``"bpe:N"``, a Hub name or a local folder.
        train_texts: documents to train ``"bpe:N"`` on (required for it, ignored otherwise).

    Raises:
        FileNotFoundError: a local folder that does not exist (never looked up on the Hub).
        ValueError: a bad ``bpe:N``, ``bpe:N`` without ``train_texts``, or a tokenizer that could
            not be loaded (naming ``spec`` and the reason).
    """
    kind, size = parse_tokenizer_spec(spec)
    if kind == "bytes":
        return byte_tokenizer()
    if kind == "bpe":
        if train_texts is None:
            raise ValueError(f"tokenizer={spec!r} is trained on the training documents; pass train_texts.")
        return train_bpe_tokenizer(train_texts, size)
    from transformers import AutoTokenizer

    from hf_wavepos.sources import loading

    with loading(spec, "tokenizer", "bytes, bpe:N, a local folder, nor a Hub id"):
        return AutoTokenizer.from_pretrained(spec)
