"""Long-document QA / summarisation: record shapes, middle truncation, offline sets, scoring."""

import ast
import json
from pathlib import Path

import pytest

from hf_wavepos.eval.datasets_offline import (
    DEBIAN_FAQ_JSONL, DEBIAN_FAQ_TXT, build_debian_faq_chapters, debian_faq_qa_records, stdlib_summarization_records,
)
from hf_wavepos.eval.longdoc import (
    TEMPLATES, TaskTemplate, load_longdoc_records, normalize_record, run_longdoc, score_answer, truncate_middle,
)
from hf_wavepos.eval.report import write_longdoc


def test_longbench_and_scrolls_records_normalise():
    longbench = {"_id": "a1", "context": "doc", "input": "q?", "answers": ["x", "y"], "length": 1}
    assert normalize_record(longbench) == {"id": "a1", "context": "doc", "input": "q?", "answers": ["x", "y"]}
    scrolls = {"id": "s1", "pid": "s1_0", "input": "question and document", "output": "answer"}
    assert normalize_record(scrolls) == {"id": "s1", "context": "", "input": "question and document", "answers": ["answer"]}
    with pytest.raises(ValueError, match="record 3 has neither 'context' nor 'input'"):
        normalize_record({"answers": ["x"]}, 3)
    with pytest.raises(ValueError, match="record 0 has no reference answer"):
        normalize_record({"context": "doc", "input": "q"})


def test_truncate_middle_keeps_both_ends():
    ids = list(range(10))
    assert truncate_middle(ids, 10) == ids
    assert truncate_middle(ids, 4) == [0, 1, 8, 9]
    assert truncate_middle(ids, 5) == [0, 1, 7, 8, 9]
    with pytest.raises(ValueError, match="max_tokens=1 must be >= 2"):
        truncate_middle(ids, 1)


def test_debian_faq_qa_set_is_real_and_has_provenance():
    records = debian_faq_qa_records()
    assert len(records) == 61
    for r in records:
        context = " ".join(r["context"].split())
        assert r["input"].endswith("?") and r["input"].split()[0] in context
        assert " ".join(r["answers"][0].split()[:4]) in context  # the answer comes from the chapter
        assert r["provenance"]["package"] == "debian-faq"
        assert "Permission is granted to make and distribute verbatim copies" in r["provenance"]["license_notice"]
    first = records[0]
    assert first["input"] == "What is Debian GNU/Linux?"
    assert first["answers"] == ["Debian GNU/Linux is a particular distribution of the Linux operating system, "
                                "and numerous packages that run on it."]


@pytest.mark.skipif(not DEBIAN_FAQ_TXT.exists(), reason="needs the Debian package debian-faq (apt-get install debian-faq)")
def test_committed_debian_faq_file_is_what_the_script_builds(tmp_path):
    rebuilt = build_debian_faq_chapters(out=tmp_path / "faq.jsonl")
    assert rebuilt.read_text(encoding="utf-8") == DEBIAN_FAQ_JSONL.read_text(encoding="utf-8")


def test_missing_debian_faq_package_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install debian-faq"):
        build_debian_faq_chapters(tmp_path / "missing.txt.gz", tmp_path / "out.jsonl")


@pytest.fixture(scope="module")
def summaries():
    return stdlib_summarization_records()


def test_stdlib_summarisation_set_separates_docstring_and_code(summaries):
    records = summaries
    assert len(records) >= 20
    for r in records[:10]:
        summary = r["answers"][0]
        assert summary not in r["context"]
        module = ast.parse(r["context"])
        assert ast.get_docstring(module) != summary
        assert r["provenance"]["license"] == "PSF-2.0" and r["provenance"]["file"].endswith(".py")
        assert 15 <= len(summary.split()) <= 150


def test_load_records_from_jsonl_and_clear_errors(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(json.dumps({"context": f"doc {i}", "input": "q", "answers": ["a"]}) for i in range(3)))
    records = load_longdoc_records(str(path), limit=2)
    assert [r["context"] for r in records] == ["doc 0", "doc 1"]
    with pytest.raises(ValueError, match="does not exist"):
        load_longdoc_records(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="gave no record"):
        load_longdoc_records(str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text('{"context": "x"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_longdoc_records(str(tmp_path / "bad.jsonl"))


def test_missing_hub_dataset_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="could not load the Hub dataset 'THUDM/LongBench'.*local .jsonl"):
        load_longdoc_records("THUDM/LongBench", config_name="qasper")


def test_run_on_debian_faq_truncates_generates_and_scores(llama, tokenizer, tmp_path):
    records = load_longdoc_records("debian_faq_qa", limit=2)
    result = run_longdoc(llama, tokenizer, records, "debian_faq_qa", max_length=256, max_new_tokens=8, show_progress=False)
    assert result["num_records"] == 2 and result["num_truncated"] == 2  # chapters are thousands of tokens
    for row, record in zip(result["predictions"], records):
        assert row["kept_tokens"] == 256 - 8 < row["prompt_tokens"]
        assert row["score"] == score_answer("qa_f1", row["prediction"], record["answers"])
    assert result["score"] == pytest.approx(sum(r["score"] for r in result["predictions"]) / 2)
    files = write_longdoc({"tiny": result}, tmp_path, "debian_faq_qa")
    assert [f.name for f in files] == ["longdoc_debian_faq_qa.json", "longdoc_debian_faq_qa.csv",
                                       "longdoc_debian_faq_qa_predictions.jsonl"]
    assert len(Path(files[2]).read_text().splitlines()) == 2
    assert "predictions" not in json.loads(files[0].read_text())["tiny"]


def test_summarisation_scores_with_rouge_l(llama, tokenizer, summaries):
    records = [normalize_record(summaries[0])]
    result = run_longdoc(llama, tokenizer, records, "stdlib_summ", max_length=200, max_new_tokens=6, show_progress=False)
    assert result["metric"] == "rouge_l" and "exact_match" not in result
    # a perfect summary scores 100, an unrelated one 0
    assert score_answer("rouge_l", records[0]["answers"][0], records[0]["answers"]) == 100.0
    assert score_answer("rouge_l", "zzz qqq", records[0]["answers"]) == 0.0
    custom = TaskTemplate("{context}\nQ: {input}\nA:", "qa_f1", 4)
    assert run_longdoc(llama, tokenizer, records, "mine", template=custom, max_length=64, show_progress=False)["metric"] == "qa_f1"
    with pytest.raises(ValueError, match="task='nope' has no template"):
        run_longdoc(llama, tokenizer, records, "nope")
    with pytest.raises(ValueError, match="leaves no room for a prompt"):
        run_longdoc(llama, tokenizer, records, "stdlib_summ", max_length=100)
    assert {"qasper", "narrativeqa", "gov_report", "qmsum", "scrolls_qa"} <= set(TEMPLATES)
