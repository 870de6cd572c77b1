"""Small long-document QA and summarisation sets built from material a machine has without the Hub.

Neither set was written by this project; both come in the LongBench record shape
(``_id``, ``dataset``, ``input``, ``context``, ``answers``, ``length``) plus ``provenance``.

- ``debian_faq_qa``: the Debian GNU/Linux FAQ (Debian package ``debian-faq``). Each record's
  context is one FAQ chapter, its question one of the FAQ's own question headings in that
  chapter, and its reference answer the first sentence of the FAQ's answer to it. The extracted
  chapters are committed as ``data/debian_faq_chapters.jsonl`` (licence notice in
  ``data/README.md`` and in every line); `build_debian_faq_chapters` rebuilds the file from the
  installed package (``apt-get install debian-faq``)::

      python -m hf_wavepos.eval.datasets_offline --rebuild-debian-faq

- ``stdlib_summ``: modules of this interpreter's standard library (Python Software Foundation
  License). The document is the module's source with its docstring removed; the reference
  summary is that docstring. Built on the fly, so it follows the installed Python version.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import platform
import re
import subprocess
import sysconfig
from pathlib import Path

from hf_wavepos.eval.texts import read_jsonl, write_jsonl

DATA_DIR = Path(__file__).parent / "data"
DEBIAN_FAQ_JSONL = DATA_DIR / "debian_faq_chapters.jsonl"
DEBIAN_FAQ_TXT = Path("/usr/share/doc/debian/FAQ/debian-faq.en.txt.gz")
DEBIAN_FAQ_COPYRIGHT = Path("/usr/share/doc/debian-faq/copyright")

BUILTIN_SETS = ("debian_faq_qa", "stdlib_summ")

_CHAPTER = re.compile(r"^Chapter (\d+)\. (.+)$")
_SECTION = re.compile(r"^(\d+(?:\.\d+)+)\. (.+)$")
_URL_PAREN = re.compile(r"\s*\((?:https?|ftp):[^)]*\)")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _first_sentence(body_lines: list[str]) -> str:
    paragraph = []
    for line in body_lines:
        if not line.strip():
            if paragraph:
                break
            continue
        paragraph.append(line.strip())
    text = _URL_PAREN.sub("", " ".join(paragraph))
    return " ".join(_SENTENCE_END.split(text, maxsplit=1)[0].split())


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9/-]+", text.lower()) if len(w) > 3 and w not in {"what", "which", "when", "where", "does", "there", "this", "that", "with", "have", "about", "from", "your"}}


def _shares_a_word(question: str, answer: str) -> bool:
    """Drop answers that do not address the question ("The answer is a bit complicated.")."""
    return bool(_content_words(question) & _content_words(answer))


def _package_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _licence_notice(copyright_text: str) -> str:
    """The permission notice paragraph(s) of the debian-faq copyright file."""
    start = copyright_text.find("Copyright (C)")
    return "\n".join(line.strip() for line in copyright_text[start:].strip().splitlines())


def parse_debian_faq(text: str) -> list[dict]:
    """Split the FAQ's plain text into chapters with their question sections.

    Args:
        text: the content of ``debian-faq.en.txt`` (non-breaking spaces allowed).

    Returns:
        One dict per chapter: ``chapter``, ``title``, ``text`` (the chapter as printed, right
        whitespace stripped) and ``questions`` (``id``, ``question``, ``answers``: a one-item list
        with the first sentence of the answer), keeping only headings that end in "?" and answers
        of 5 to 40 words that end with a full stop and share a content word with the question.
    """
    lines = [line.replace("\u00a0", " ").rstrip() for line in text.split("\n")]
    starts = [i for i, line in enumerate(lines) if _CHAPTER.match(line)]
    if not starts:
        raise ValueError("no 'Chapter N. Title' line found: is this the Debian FAQ plain text?")
    chapters = []
    for c, start in enumerate(starts):
        end = starts[c + 1] if c + 1 < len(starts) else len(lines)
        block = lines[start:end]
        number, title = _CHAPTER.match(block[0]).groups()
        questions = []
        i = 1
        while i < len(block):
            match = _SECTION.match(block[i])
            if not match:
                i += 1
                continue
            heading = [match.group(2)]
            i += 1
            while i < len(block) and block[i].strip() and not block[i].startswith(" "):
                heading.append(block[i].strip())
                i += 1
            j = i
            while j < len(block) and not _SECTION.match(block[j]):
                j += 1
            question = " ".join(" ".join(heading).split())
            answer = _first_sentence(block[i:j])
            words = len(answer.split())
            if question.endswith("?") and 5 <= words <= 40 and answer.endswith(".") and _shares_a_word(question, answer):
                questions.append({"id": f"debian-faq/{match.group(1)}", "question": question, "answers": [answer]})
            i = j
        chapters.append({
            "chapter": int(number), "title": title, "text": "\n".join(block).strip() + "\n", "questions": questions,
        })
    return chapters


def build_debian_faq_chapters(txt_gz: str | Path = DEBIAN_FAQ_TXT, out: str | Path = DEBIAN_FAQ_JSONL) -> Path:
    """Rebuild ``data/debian_faq_chapters.jsonl`` from the installed ``debian-faq`` package.

    Raises:
        FileNotFoundError: the package is not installed (the message says how to install it).
    """
    txt_gz = Path(txt_gz)
    if not txt_gz.exists():
        raise FileNotFoundError(f"{txt_gz} is missing: install the Debian package with `apt-get install debian-faq`")
    text = gzip.decompress(txt_gz.read_bytes()).decode("utf-8")
    version = re.search(r"Version ([\d.]+)", text)
    notice = _licence_notice(DEBIAN_FAQ_COPYRIGHT.read_text(encoding="utf-8")) if DEBIAN_FAQ_COPYRIGHT.exists() else ""
    provenance = {
        "package": "debian-faq", "package_version": _package_version("debian-faq"), "file": str(txt_gz),
        "document": "The Debian GNU/Linux FAQ", "document_version": version.group(1) if version else "unknown",
        "copyright": "Copyright (C) 1996-2021 Software in the Public Interest", "license_notice": notice,
        "extraction": "hf_wavepos.eval.datasets_offline.parse_debian_faq",
    }
    chapters = [{"id": f"debian-faq/chapter-{ch['chapter']}", **ch, "provenance": provenance} for ch in parse_debian_faq(text)]
    return write_jsonl(chapters, out)


def debian_faq_chapters() -> list[dict]:
    """The committed Debian FAQ chapters (see the module docstring)."""
    if not DEBIAN_FAQ_JSONL.exists():
        raise FileNotFoundError(f"{DEBIAN_FAQ_JSONL} is missing from the package; rebuild it with build_debian_faq_chapters()")
    return read_jsonl(DEBIAN_FAQ_JSONL)


def debian_faq_qa_records() -> list[dict]:
    """LongBench-shaped QA records: context = a FAQ chapter, input = one of its questions."""
    records = []
    for chapter in debian_faq_chapters():
        for q in chapter["questions"]:
            records.append({
                "_id": q["id"], "dataset": "debian_faq_qa", "input": q["question"], "context": chapter["text"],
                "answers": q["answers"], "length": len(chapter["text"].split()),
                "provenance": {**chapter["provenance"], "chapter": chapter["chapter"]},
            })
    return records


def _strip_docstring(source: str, tree: ast.Module) -> str:
    node = tree.body[0]
    lines = source.splitlines(keepends=True)
    return "".join(lines[: node.lineno - 1] + lines[node.end_lineno :]).lstrip("\n")


def stdlib_summarization_records(
    min_document_chars: int = 2000,
    max_document_chars: int = 60000,
    min_summary_words: int = 15,
    max_summary_words: int = 150,
) -> list[dict]:
    """LongBench-shaped summarisation records from the top-level standard library modules.

    Args:
        min_document_chars, max_document_chars: keep modules whose source without the docstring
            has this many characters.
        min_summary_words, max_summary_words: keep docstrings of this many words.

    Returns:
        Records sorted by module name: ``context`` = source without its docstring, ``answers`` =
        [the docstring, cleaned by ``inspect.cleandoc``], ``input`` = "" (the task is the prompt).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    records = []
    for path in sorted(root.glob("*.py")):
        if path.name.startswith("_"):
            continue
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        summary = ast.get_docstring(tree, clean=True)
        if not summary or not min_summary_words <= len(summary.split()) <= max_summary_words:
            continue
        document = _strip_docstring(source, tree)
        if not min_document_chars <= len(document) <= max_document_chars:
            continue
        records.append({
            "_id": f"stdlib-summ/{path.stem}", "dataset": "stdlib_summ", "input": "", "context": document,
            "answers": [summary], "length": len(document.split()),
            "provenance": {
                "source": "Python standard library", "python_version": platform.python_version(),
                "file": path.name, "license": "PSF-2.0",
            },
        })
    return records


def builtin_records(name: str) -> list[dict]:
    """Records of a built-in offline set: ``"debian_faq_qa"`` or ``"stdlib_summ"``."""
    if name == "debian_faq_qa":
        return debian_faq_qa_records()
    if name == "stdlib_summ":
        return stdlib_summarization_records()
    raise ValueError(f"unknown built-in set {name!r}; choose one of {BUILTIN_SETS}")


def main(argv: list[str] | None = None) -> int:
    """``python -m hf_wavepos.eval.datasets_offline --rebuild-debian-faq``: regenerate the data file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild-debian-faq", action="store_true", help="rebuild data/debian_faq_chapters.jsonl")
    parser.add_argument("--txt", default=str(DEBIAN_FAQ_TXT), help="the FAQ's plain text (.txt.gz)")
    parser.add_argument("--out", default=str(DEBIAN_FAQ_JSONL))
    args = parser.parse_args(argv)
    if args.rebuild_debian_faq:
        path = build_debian_faq_chapters(args.txt, args.out)
        chapters = read_jsonl(path)
        print(f"wrote {path}: {len(chapters)} chapters, {sum(len(c['questions']) for c in chapters)} questions")
    else:
        for name in BUILTIN_SETS:
            print(f"{name}: {len(builtin_records(name))} records")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
