"""Haystacks of real text with needles at chosen depths (shared by passkey and needle tasks).

A haystack is a list of sentences from real prose; it is cycled when a prompt needs more text.
`build_prompt` lays out ``prefix + haystack (needles inserted) + suffix`` so that the prompt has
at most ``context_length`` tokens, and puts each needle at the sentence boundary nearest to its
requested depth (0 = start of the haystack, 1 = end). Depth is measured in haystack tokens; the
depth actually used is returned, so reports can show it.

Haystack sources (`haystack_sentences`):

- ``"debian-faq"`` (default): the Debian GNU/Linux FAQ prose shipped in ``eval/data`` (see
  ``eval/data/README.md`` for provenance and licence).
- ``"stdlib-docstrings"``: the docstrings of this interpreter's top-level standard library modules.
- ``"classic"``: the repeated filler of the original passkey test (Mohtashami & Jaggi, 2023),
  for comparison with published passkey numbers; it is not real text.
- any `hf_wavepos.eval.texts.load_texts` source (a path, a Hub dataset, ``"stdlib"``).
"""

from __future__ import annotations

import ast
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

CLASSIC_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
MAX_SENTENCE_WORDS = 20


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences (paragraph breaks and . ! ? followed by a capital), whitespace
    collapsed; sentences over 20 words are cut into 20-word pieces so that depths stay precise."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        for sentence in _SENTENCE_END.split(paragraph):
            words = sentence.split()
            for i in range(0, len(words), MAX_SENTENCE_WORDS):
                out.append(" ".join(words[i : i + MAX_SENTENCE_WORDS]))
    return [s for s in out if s]


def stdlib_docstrings() -> list[str]:
    """Docstrings of the top-level standard library modules (sorted by file), as texts."""
    docs = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:  # a few test files are deliberately invalid
            continue
        doc = ast.get_docstring(tree)
        if doc and len(doc.split()) >= 20:
            docs.append(doc)
    return docs


def haystack_sentences(source: str = "debian-faq", **load_kwargs) -> list[str]:
    """Sentences of a haystack source (see the module docstring).

    Raises:
        ValueError: the source gives no sentence.
    """
    if source == "classic":
        sentences = split_sentences(CLASSIC_FILLER)
    elif source == "debian-faq":
        from hf_wavepos.eval.datasets_offline import debian_faq_chapters

        sentences = [s for ch in debian_faq_chapters() for s in split_sentences(ch["text"])]
    elif source == "stdlib-docstrings":
        sentences = [s for doc in stdlib_docstrings() for s in split_sentences(doc)]
    else:
        from hf_wavepos.eval.texts import load_texts

        sentences = [s for text in load_texts(source, **load_kwargs) for s in split_sentences(text)]
    if not sentences:
        raise ValueError(f"haystack source {source!r} gave no sentence of text")
    return sentences


@dataclass
class Prompt:
    """A laid-out prompt: ids, where the needles start, and the depths actually used."""

    input_ids: list[int]
    needle_starts: list[int]  # token index of each needle's first token in input_ids
    depths: list[float]  # haystack tokens before each needle / haystack tokens
    haystack_tokens: int
    meta: dict = field(default_factory=dict)


class Haystack:
    """Sentences tokenised once for one tokenizer, cycled from ``offset`` as prompts need text."""

    def __init__(self, tokenizer, sentences: Sequence[str]):
        if not sentences:
            raise ValueError("sentences is empty; give a haystack with at least one sentence")
        self.tokenizer = tokenizer
        self.sentences = list(sentences)
        self.lengths = [len(self.encode(" " + s)) for s in self.sentences]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _take(self, budget: int, offset: int) -> list[str]:
        """Sentences from ``offset`` (cycling) whose estimated tokens sum to at most ``budget``; the
        last one may be cut at a word boundary to fill the budget."""
        taken, used, i = [], 0, offset
        while True:
            sentence = self.sentences[i % len(self.sentences)]
            n = self.lengths[i % len(self.sentences)]
            if used + n > budget:
                words = sentence.split()
                keep = int((budget - used) * len(words) / n)
                if keep > 0:
                    taken.append(" ".join(words[:keep]))
                return taken
            taken.append(sentence)
            used += n
            i += 1

    def build_prompt(
        self,
        context_length: int,
        needles: Sequence[tuple[float, str]],
        prefix: str,
        suffix: str,
        offset: int = 0,
    ) -> Prompt:
        """Lay out ``prefix + haystack with needles + suffix`` in at most ``context_length`` tokens.

        Args:
            context_length: the most tokens the prompt may have (special tokens included).
            needles: (depth in [0, 1], text) pairs.
            prefix: text before the haystack (task instructions).
            suffix: text after it (the question and answer prefix).
            offset: index of the first haystack sentence (varies the text between samples).

        Raises:
            ValueError: a depth is outside [0, 1], or prefix + needles + suffix leave no room.
        """
        for depth, _ in needles:
            if not 0.0 <= depth <= 1.0:
                raise ValueError(f"needle depth {depth} is outside [0, 1]")
        tok = self.tokenizer
        fixed = len(tok(prefix + suffix + " ".join(t for _, t in needles), verbose=False)["input_ids"]) + 2 * len(needles) + 2
        budget = context_length - fixed
        if budget < 1:
            raise ValueError(
                f"context_length={context_length} leaves no room for haystack text after the {fixed} tokens of "
                "instructions, needles and question; use a longer context_length"
            )
        order = sorted(range(len(needles)), key=lambda k: needles[k][0])
        ordered = [needles[k] for k in order]
        best, low, high = None, None, None  # low / high: budgets known to give <= / > context_length
        for _ in range(16):  # per-sentence counts only estimate the joint tokenisation: search the budget
            prompt = self._layout(self._take(budget, offset), ordered, prefix, suffix, offset)
            n = len(prompt.input_ids)
            if n <= context_length:
                if best is None or n > len(best.input_ids):
                    best = prompt
                if context_length - n <= 1:
                    break
                low = budget
                budget = budget + (context_length - n) if high is None else (budget + high) // 2
            else:
                high = budget
                budget = budget - (n - context_length) if low is None else (low + budget) // 2
            if budget < 0 or (low is not None and high is not None and high - low <= 1):
                break
        if best is None:
            best = self._layout([], ordered, prefix, suffix, offset)
        prompt = best
        # report needles in the caller's order
        starts, depths = [0] * len(needles), [0.0] * len(needles)
        for pos, k in enumerate(order):
            starts[k], depths[k] = prompt.needle_starts[pos], prompt.depths[pos]
        prompt.needle_starts, prompt.depths = starts, depths
        return prompt

    def _layout(self, sentences, needles, prefix, suffix, offset) -> Prompt:
        lens = [self.lengths[(offset + i) % len(self.sentences)] for i in range(len(sentences))]
        if sentences and sentences[-1] != self.sentences[(offset + len(sentences) - 1) % len(self.sentences)]:
            lens[-1] = len(self.encode(" " + sentences[-1]))  # the cut last sentence
        total = sum(lens)
        cumulative = [0]
        for n in lens:
            cumulative.append(cumulative[-1] + n)
        # boundary index (number of sentences before) nearest to each requested depth
        slots = [min(range(len(cumulative)), key=lambda b: abs(cumulative[b] - d * total)) for d, _ in needles]
        pieces, marks = [prefix], []
        s = 0
        for (_, text), slot in zip(needles, slots):
            if slot > s:
                pieces.append(" " + " ".join(sentences[s:slot]))
                s = slot
            marks.append(len("".join(pieces)))
            pieces.append(" " + text)
        if s < len(sentences):
            pieces.append(" " + " ".join(sentences[s:]))
        pieces.append(suffix)
        text = "".join(pieces)
        ids = list(self.tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"])
        hay_start = len(self.tokenizer(prefix, add_special_tokens=True, verbose=False)["input_ids"])
        hay_end = len(ids) - len(self.encode(suffix))
        starts = [len(self.tokenizer(text[:m], add_special_tokens=True, verbose=False)["input_ids"]) for m in marks]
        needle_tokens = [len(self.encode(" " + t)) for _, t in needles]
        hay_tokens = max(1, hay_end - hay_start - sum(needle_tokens))
        depths = []
        for k, start in enumerate(starts):
            before = start - hay_start - sum(needle_tokens[:k])
            depths.append(min(1.0, max(0.0, before / hay_tokens)))
        return Prompt(ids, starts, depths, hay_tokens, {"text": text})
