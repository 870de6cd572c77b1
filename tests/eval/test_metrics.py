"""QA F1 / exact match and ROUGE: published reference values, loaded through `evaluate` offline."""

import socket

import pytest

from hf_wavepos.eval.metrics import METRIC_NAMES, load_metric, metric_path
from hf_wavepos.eval.scoring import exact_match, normalize_answer, qa_f1, qa_scores, retrieval_exact, rouge_scores


@pytest.fixture
def offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to use the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)


def test_squad_normalisation_and_hand_values():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    # pred "cat sat on mat" vs ref "cat sat": overlap 2, precision 1/2, recall 1 -> F1 2/3
    assert qa_f1("The cat sat on the mat", "a cat sat") == pytest.approx(2 / 3)
    assert qa_f1("", "anything") == 0.0


def test_qa_metric_matches_the_squad_metric_card(offline):
    # the partial-match example of the SQuAD metric card (huggingface/evaluate, metrics/squad/README.md)
    predictions = ["1976", "Beyonce", "climate change"]
    references = [["1976"], ["Beyoncé and Bruno Mars"], ["climate change"]]
    expected = {"exact_match": 66.66666666666667, "f1": 66.66666666666667}
    assert qa_scores(predictions, references) == pytest.approx(expected)
    metric = load_metric("qa_f1")
    assert metric.compute(predictions=predictions, references=references) == pytest.approx(expected)
    # single string references and best-of-several
    assert metric.compute(predictions=["1999"], references=["1976"]) == {"exact_match": 0.0, "f1": 0.0}
    assert metric.compute(predictions=["Broncos"], references=[["Denver Broncos", "Broncos"]])["f1"] == 100.0


def test_rouge_matches_published_values(offline):
    # evaluate's ROUGE metric card, several references per prediction
    metric = load_metric("rouge")
    out = metric.compute(predictions=["hello there", "general kenobi"],
                         references=[["hello", "there"], ["general kenobi", "general yoda"]])
    assert out == pytest.approx({"rouge1": 0.8333333, "rouge2": 0.5, "rougeL": 0.8333333, "rougeLsum": 0.8333333}, abs=1e-6)
    # Lin (2004), Sec. 3.1: ROUGE-L of S2 and S3 against "police killed the gunman" is 3/4 and 2/4
    per = metric.compute(predictions=["police kill the gunman", "the gunman kill police"],
                         references=["police killed the gunman"] * 2, rouge_types=["rougeL"], use_aggregator=False)
    assert per == {"rougeL": [0.75, 0.5]}
    assert rouge_scores(["police kill the gunman"], ["police killed the gunman"], ["rouge_1"]) == {"rouge1": 0.75}
    with pytest.raises(ValueError, match="rouge_types contains 'bleu'"):
        rouge_scores(["a"], ["a"], ["bleu"])


def test_every_metric_module_loads_from_its_folder(offline):
    for name in METRIC_NAMES:
        module = load_metric(name)
        assert module.name == name
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        metric_path("bleu")


def test_mismatched_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="references has 1 entries but predictions has 2"):
        qa_scores(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"references\[0\] is empty"):
        qa_scores(["a"], [[]])


def test_retrieval_scoring_is_exact():
    assert retrieval_exact("12345. Remember it.", "12345")
    assert retrieval_exact(" 12345", "12345")
    assert not retrieval_exact("1234", "12345")
    assert not retrieval_exact("123456", "12345")
    assert not retrieval_exact("9 then 12345", "12345")
    assert not retrieval_exact("no number", "12345")
