"""`wavepos eval ...` end to end on saved tiny models (a stock and a wavepos one): one run folder."""

import argparse
import json

import pytest

from hf_wavepos import apply_wavepos
from hf_wavepos.eval.commands import add_eval_commands
from tests.tiny_lm import STDLIB, tiny_llama


def run(argv):
    parser = argparse.ArgumentParser(prog="wavepos")
    add_eval_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def folders(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    stock, wave = root / "stock", root / "wave"
    tiny_llama(len(tokenizer), seed=0).save_pretrained(stock)
    apply_wavepos(tiny_llama(len(tokenizer), seed=0), "long").save_pretrained(wave)
    for folder in (stock, wave):
        tokenizer.save_pretrained(folder)
    return stock, wave


def test_all_eval_commands_fill_one_run_folder(folders, tmp_path, capsys):
    stock, wave = folders
    out = tmp_path / "run"
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"text": (STDLIB / name).read_text()[:n]}) for name, n in (("textwrap.py", 3000), ("string.py", 1200))))
    common = ["--out", str(out), "--device", "cpu"]
    with pytest.warns(UserWarning, match="shorter than"):
        assert run(["eval", "ppl", "--model", f"rope={stock}", "--model", f"wavelet={wave}", "--data", str(data),
                    "--lengths", "64,128,1000", "--train-length", "64", *common]) == 0
    assert run(["eval", "ppl", "--model", f"wavelet={wave}", "--data", str(data), "--lengths", "64",
                "--mode", "sliding", "--stride", "32", "--out", str(tmp_path / "sliding")]) == 0
    assert run(["eval", "passkey", "--model", f"wavelet={wave}", "--lengths", "128", "--depths", "0.5",
                "--samples", "1", *common]) == 0
    assert run(["eval", "needle", "--model", str(wave), "--lengths", "256", "--depths", "0.5", "--samples", "1",
                "--variant", "distractor", "--needles", "2", *common]) == 0
    assert run(["eval", "longdoc", "--model", f"wavelet={wave}", "--data", "debian_faq_qa", "--limit", "1",
                "--max-length", "192", "--max-new-tokens", "6", *common]) == 0
    printed = capsys.readouterr().out
    assert "rope: 64:" in printed and "wavelet: passkey accuracy" in printed and "wave: needle/distractor" in printed

    manifest = json.loads((out / "run.json").read_text())
    assert set(manifest["evaluations"]) == {"perplexity", "passkey", "needle_distractor", "longdoc_debian_faq_qa"}
    for entry in manifest["evaluations"].values():
        for name in entry["files"]:
            assert (out / name).stat().st_size > 0, name
    ppl = json.loads((out / "perplexity.json").read_text())
    assert set(ppl["results"]) == {"rope", "wavelet"}
    assert [r["num_documents"] for r in ppl["results"]["wavelet"]] == [2, 2, 1]
    assert "needle_distractor_wave.png" in manifest["evaluations"]["needle_distractor"]["files"]
    sliding = json.loads((tmp_path / "sliding" / "perplexity.json").read_text())
    assert sliding["protocol"]["mode"] == "sliding" and sliding["protocol"]["stride"] == 32


def test_cli_errors_are_clear(folders, tmp_path, monkeypatch):
    stock, _ = folders
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"text": "too short"}) + "\n")
    with pytest.raises(ValueError, match="no document reaches length 512 tokens"):
        run(["eval", "ppl", "--model", str(stock), "--data", str(short), "--lengths", "512", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="model folder '.*nothing' does not exist"):
        run(["eval", "passkey", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path)])
    monkeypatch.chdir(tmp_path)  # a relative path under an existing folder is local too (never a Hub lookup)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ValueError, match="model folder 'runs/nothing' does not exist"):
        run(["eval", "passkey", "--model", "runs/nothing", "--out", str(tmp_path)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="could not load model '.*empty'"):
        run(["eval", "passkey", "--model", str(tmp_path / "empty"), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="does not exist"):
        run(["eval", "ppl", "--model", str(stock), "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        run(["eval", "passkey", "--model", str(stock), "--depths", "0.5,2"])
