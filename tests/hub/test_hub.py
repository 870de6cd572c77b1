"""Publishing: model card, assembled folder, remote-code loading, refusals (no network)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import LlamaConfig, LlamaForCausalLM

from hf_wavepos import apply_wavepos
from hf_wavepos.data.corpus import iter_stdlib_documents, stdlib_files
from hf_wavepos.data.tokenizers import train_bpe_tokenizer
from hf_wavepos.eval.perplexity import perplexity_report
from hf_wavepos.eval.report import write_perplexity
from hf_wavepos.hub import assemble_folder, check_folder, push_folder, render_card


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    texts = [doc["text"] for doc in iter_stdlib_documents(stdlib_files(max_documents=12, seed=3))]
    tokenizer = train_bpe_tokenizer(texts[:8], vocab_size=300)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)
    rope = LlamaForCausalLM(config).eval()
    torch.manual_seed(0)
    wavelet = apply_wavepos(LlamaForCausalLM(config).eval(), "long")
    wavelet.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    report = perplexity_report({"wavelet": (wavelet, tokenizer), "rope": (rope, tokenizer)}, texts[8:], [16, 64],
                               source="python-stdlib", show_progress=False)
    write_perplexity(report, root / "run", train_length=16)
    out = assemble_folder(root / "model", root / "out", eval_run=root / "run", label="wavelet",
                          repo_id="someone/tiny-wavepos", base_model=None, datasets=["python-stdlib"])
    return root, out, report, wavelet


def test_card_metadata_parses_and_carries_the_numbers(published):
    root, out, report, _ = published
    card = ModelCard.load(out / "README.md")
    assert {"wavepos", "long-context"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "text-generation" and card.data.license == "apache-2.0"
    values = {r.metric_name: r.metric_value for r in card.data.eval_results}
    for row in report["results"]["wavelet"]:
        assert values[f"Perplexity @ {row['length']} tokens"] == pytest.approx(row["perplexity"])
    text = card.text
    assert "## Perplexity against context length" in text and "eval/perplexity.png" in text
    assert "trust_remote_code=True" in text and "oka2025wavelet" in text
    assert f"{report['results']['rope'][0]['perplexity']:.2f}" in text  # the comparison column
    assert (out / "eval" / "perplexity.png").stat().st_size > 0


def test_folder_is_safetensors_only_and_complete(published):
    _, out, _, _ = published
    names = {p.name for p in out.rglob("*")}
    assert "model.safetensors" in names and "modeling_wavepos_llama.py" in names and "tokenizer.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pkl", ".pth"))]
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"].startswith(
        "modeling_wavepos_llama.")


@pytest.mark.slow
def test_assembled_folder_loads_without_the_plugin(published, tmp_path):
    _, out, _, wavelet = published
    script = textwrap.dedent('''
        import sys
        sys.modules["hf_wavepos"] = None
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        folder, out = sys.argv[1:3]
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        ids = tokenizer("def main():\\n    return 1", return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits
        generated = model.generate(ids, max_new_tokens=6, do_sample=False)
        torch.save({"ids": ids, "logits": logits, "generated": generated}, out)
    ''')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "r.pt")], check=True, env=env,
                   capture_output=True, cwd=tmp_path)
    result = torch.load(tmp_path / "r.pt")
    with torch.no_grad():
        assert torch.equal(result["logits"], wavelet(result["ids"]).logits)
    assert result["generated"].shape[1] == result["ids"].shape[1] + 6


def test_incomplete_or_pickled_folders_are_refused(published, tmp_path):
    _, out, _, _ = published
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no .safetensors weights"):
        check_folder(broken)
    with pytest.raises(ValueError, match="no .safetensors weights"):
        assemble_folder(broken, tmp_path / "x")
    (broken / "config.json").unlink()
    with pytest.raises(ValueError, match="no config.json"):
        check_folder(broken)
    pickled = tmp_path / "pickled"
    shutil.copytree(out, pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="pickle-based files"):
        check_folder(pickled)
    with pytest.raises(ValueError, match="not empty"):
        assemble_folder(out, out)


def test_render_card_needs_a_label_when_the_run_has_several(published):
    root, out, _, _ = published
    config = json.loads((out / "config.json").read_text())
    with pytest.raises(ValueError, match=r"several models \['wavelet', 'rope'\]"):
        render_card(config, name="x", repo_id="x", eval_run=root / "run")
    with pytest.raises(ValueError, match="no run.json"):
        render_card(config, name="x", repo_id="x", eval_run=root)


def test_push_fails_cleanly_without_token_or_network(published, monkeypatch, tmp_path):
    _, out, _, _ = published
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(RuntimeError, match="no Hugging Face token.*Nothing was uploaded"):
        push_folder(out, "someone/tiny-wavepos")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="cannot reach the Hugging Face Hub.*Nothing was uploaded"):
        push_folder(out, "someone/tiny-wavepos", token="hf_not_a_real_token")


def test_cli_card_and_push_dry_run(published, tmp_path, capsys):
    from hf_wavepos.cli import main

    root, _, _, _ = published
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: {arch: llama}\nsteps: 10\n")
    assert main(["push", str(root / "model"), "someone/tiny", "--eval-run", str(root / "run"), "--label", "rope",
                 "--dry-run", "--out", str(tmp_path / "dry"), "--recipe", str(recipe)]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "model.safetensors" in out and "README.md" in out
    card = (tmp_path / "dry" / "README.md").read_text()
    assert "**rope** (this model)" in card and "steps: 10" in card
    check_folder(tmp_path / "dry")
    assert main(["card", str(root / "model"), "--out", str(tmp_path / "card"), "--eval-run", str(root / "run"),
                 "--label", "wavelet"]) == 0
    with pytest.raises(SystemExit) as exit_:
        main(["push", str(root / "model"), "someone/tiny", "--dry-run"])
    assert exit_.value.code == 2
    assert "--dry-run writes the folder" in capsys.readouterr().err
    # A wrong label is refused before anything is written; the rerun with the right one then works.
    for command in (["card", str(root / "model"), "--out", str(tmp_path / "fresh")],
                    ["push", str(root / "model"), "someone/tiny", "--dry-run", "--out", str(tmp_path / "fresh")]):
        with pytest.raises(SystemExit):
            main([*command, "--eval-run", str(root / "run"), "--label", "nope"])
        assert "label 'nope' is not in the run" in capsys.readouterr().err and not (tmp_path / "fresh").exists()
    with pytest.raises(SystemExit):
        main(["card", str(root / "model"), "--out", str(tmp_path / "fresh"), "--label", "rope"])
    assert "give the run too" in capsys.readouterr().err and not (tmp_path / "fresh").exists()
    with pytest.raises(SystemExit):
        main(["card", str(tmp_path / "no-model"), "--out", str(tmp_path / "fresh")])
    assert "MODEL_DIR" in capsys.readouterr().err and not (tmp_path / "fresh").exists()
    assert main(["card", str(root / "model"), "--out", str(tmp_path / "fresh"), "--eval-run", str(root / "run"),
                 "--label", "rope"]) == 0
    with pytest.raises(SystemExit):  # an existing folder names the command-line flag
        main(["card", str(root / "model"), "--out", str(tmp_path / "fresh"), "--eval-run", str(root / "run"),
              "--label", "nope", "--overwrite"])
    assert "label 'nope'" in capsys.readouterr().err and (tmp_path / "fresh" / "README.md").is_file()
    with pytest.raises(SystemExit):
        main(["card", str(root / "model"), "--out", str(tmp_path / "fresh")])
    assert "--overwrite" in capsys.readouterr().err


def test_cli_without_a_tokenizer_in_the_model_folder_names_the_command_line_remedy(published, tmp_path, capsys):
    from transformers import AutoTokenizer

    from hf_wavepos.cli import main

    root, _, _, wavelet = published
    bare = tmp_path / "bare"
    wavelet.save_pretrained(bare)  # weights and config, no tokenizer files
    for command in (["card", str(bare), "--out", str(tmp_path / "card")],
                    ["push", str(bare), "someone/tiny", "--dry-run", "--out", str(tmp_path / "dry")]):
        with pytest.raises(SystemExit) as exit_:
            main(command)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "--tokenizer PATH_OR_ID" in err and f"copy the tokenizer files into {bare}" in err
        assert "tokenizer=" not in err  # no Python-API remedy for a command-line user
    with pytest.raises(SystemExit):
        main(["card", str(bare), "--out", str(tmp_path / "card"), "--tokenizer", str(tmp_path / "missing")])
    assert f"--tokenizer '{tmp_path / 'missing'}' does not exist" in capsys.readouterr().err
    # The remedy works: the tokenizer comes from the given folder and lands in the assembled one.
    assert main(["card", str(bare), "--out", str(tmp_path / "card"), "--tokenizer", str(root / "model")]) == 0
    assert AutoTokenizer.from_pretrained(tmp_path / "card").get_vocab() == AutoTokenizer.from_pretrained(
        root / "model").get_vocab()
    with pytest.raises(ValueError, match="tokenizer= .*a tokenizer, or the folder or Hub id to load it from"):
        assemble_folder(bare, tmp_path / "api")
    assemble_folder(bare, tmp_path / "api", tokenizer=root / "model")
    check_folder(tmp_path / "api")


def test_recipe_option_takes_a_file_or_any_text(tmp_path):
    from hf_wavepos.cli import _recipe_text

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  max_steps: 3\n")
    assert "```yaml\ntrain:\n  max_steps: 3\n```" in _recipe_text(str(recipe))
    long_text = "Stage 1: attention transfer.\n" + "x" * 5000  # once crashed with "File name too long"
    assert _recipe_text(long_text) == long_text and _recipe_text("x" * 5000) == "x" * 5000
    assert _recipe_text(None) is None
