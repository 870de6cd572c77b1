"""`wavepos bench conversion` end to end on a tiny stock Llama (seconds): every recipe, the recovery
figures, perplexity, the extension length and passkey, and its written results."""

from __future__ import annotations

import json
import re
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

from hf_wavepos.cli import main  # noqa: E402
from hf_wavepos.data import byte_tokenizer  # noqa: E402
from hf_wavepos.experiments.conversion import (  # noqa: E402
    ConversionConfig,
    load_method_model,
    parse_method,
    tokens_to_within,
)

METHODS = ["rope:plain", "rope-yarn:zero-shot", "rope-linear:plain", "nope:distill", "long:plain", "alibi:lora-distill",
           "long:transfer", "long:transfer-distill"]


@pytest.fixture()
def fresh_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def save_tiny_llama(folder: Path) -> None:
    tok = byte_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, initializer_range=0.1,
    )).save_pretrained(folder)
    tok.save_pretrained(folder)


def test_bench_conversion_end_to_end(tmp_path, fresh_accelerate, capsys):
    save_tiny_llama(tmp_path / "tiny")
    config = tmp_path / "conversion.yaml"
    config.write_text(json.dumps({
        "source": str(tmp_path / "tiny"), "methods": METHODS, "block_size": 64, "steps": 3, "global_batch_size": 2,
        "lr": 3e-3, "lora_lr": 1e-2, "transfer_steps": 2, "warmup_steps": 1, "train_documents": 6, "heldout_documents": 12,
        "eval_every": 1, "eval_blocks": 2, "eval_documents": 2, "length_multiples": [1, 2],
        "extension_length": 600, "extension_documents": 2, "extension_methods": ["rope:plain", "long:plain"],
        "passkey_multiples": [4], "passkey_depths": [0.5], "passkey_samples": 1, "lora_r": 2, "lora_alpha": 4,
        "transfer_distill_lr": 1e-3, "transfer_distill_trainable": ["q_proj", "k_proj", "v_proj", "o_proj"],
    }))  # JSON is YAML
    out = tmp_path / "run"
    assert main(["bench", "conversion", "--config", str(config), "--out", str(out)]) == 0
    summary = json.loads((out / "conversion.json").read_text())
    assert list(summary["methods"]) == METHODS and summary["device"].startswith("CPU")
    for method, row in summary["methods"].items():
        assert set(row["perplexity"]) == {"64", "128"} and all(p > 1 for p in row["perplexity"].values())
        assert set(row["passkey"]) == {"256"}
        if parse_method(method)[1] == "zero-shot":
            assert "recovery" not in row
            continue
        tokens = [r["tokens"] for r in row["recovery"]]
        if parse_method(method)[1].startswith("transfer"):  # 2 transfer steps (+ 3 distillation steps)
            stages = [r["stage"] for r in row["recovery"]]
            expected = [0, 128, 256] + ([384, 512, 640] if method.endswith("distill") else [])
            assert tokens == expected and row["trained_tokens"] == expected[-1], (method, tokens)
            assert stages[:3] == ["transfer"] * 3 and stages[3:] == ["distill"] * (len(stages) - 3)
            continue
        assert tokens == [0, 128, 256, 384] and row["trained_tokens"] == 3 * 2 * 64  # 0: right after conversion
        assert row["recovery"][-1]["perplexity"] == pytest.approx(row["final_perplexity"])
        assert "tokens_to_1.25x" in row and row["vs_control"] > 0
    control = summary["methods"]["rope:plain"]
    assert control["vs_control"] == 1.0 and control["tokens_to_1.1x"] is not None
    assert set(summary["extension"]["methods"]) == {"rope:plain", "long:plain"}
    assert summary["methods"]["long:plain"]["extension_perplexity"] > 1
    assert 0 <= summary["methods"]["long:plain"]["extension_passkey"] <= 1  # passkey at the extension length
    assert "extension_perplexity" not in summary["methods"]["nope:distill"]
    assert summary["methods"]["alibi:lora-distill"]["trainable_parameters"] < summary["methods"]["long:plain"]["trainable_parameters"]
    for name in ("recovery.png", "recovery.csv", "perplexity.png", "perplexity.json", "passkey.json",
                 "passkey_by_length.png", "extension/perplexity.json", "run.json"):
        assert (out / name).is_file(), name
    readme = (out / "README.md").read_text()
    assert "| `long:plain` |" in readme and "--config" in readme and "ppl 600" in readme and "passkey 600" in readme
    assert not list((out / "models").glob("*/checkpoints"))  # optimiser states removed

    # The transfer stage trains only the query/key projections and is shared by both transfer recipes;
    # the distillation stage starts from it, with the stock model as its teacher.
    assert sorted(p.name for p in (out / "models").glob("long_transfer*")) == ["long_transfer", "long_transfer-distill"]
    assert summary["methods"]["long:transfer"]["trainable_parameters"] < summary["methods"]["long:plain"]["trainable_parameters"]
    from hf_wavepos.training import load_config

    second = load_config(out / "models" / "long_transfer-distill" / "train_config.yaml")
    assert second.model.pretrained == str(out / "models" / "long_transfer" / "final") and second.model.position == "keep"
    assert second.distill.teacher == str(out / "stock") and second.distill.target == "logits"
    assert second.optim.lr == 1e-3 and second.distill.trainable == ["q_proj", "k_proj", "v_proj", "o_proj"]
    first = load_config(out / "models" / "long_transfer" / "train_config.yaml")
    assert first.optim.lr == 3e-3 and first.distill.target == "attention" and first.distill.trainable is None

    # Trained models reload as saved: the scaled RoPE keeps its rope_parameters, conversions their type.
    linear = AutoModelForCausalLM.from_pretrained(out / "models" / "rope-linear_plain" / "final")
    assert linear.config.rope_parameters["rope_type"] == "linear" and linear.config.rope_parameters["factor"] == 2
    yarn = load_method_model(ConversionConfig(source="x", methods=("rope:plain",)), "rope-yarn:zero-shot", out / "stock")
    assert yarn.config.rope_parameters["rope_type"] == "yarn"
    assert yarn.config.rope_parameters["original_max_position_embeddings"] == 128

    # A second run reuses the finished trainings.
    capsys.readouterr()
    assert main(["bench", "conversion", "--config", str(config), "--out", str(out), "--methods", "rope:plain"]) == 0
    printed = capsys.readouterr().out
    assert "trained earlier with the same settings, reusing" in printed and "scores of an earlier run reused" in printed

    # A finished training is never reused for other settings: the error names them and the fix.
    changed = json.loads(config.read_text()) | {"transfer_distill_lr": 2e-3}
    config.write_text(json.dumps(changed))
    with pytest.raises(SystemExit):
        main(["bench", "conversion", "--config", str(config), "--out", str(out), "--methods", "rope:plain,long:transfer-distill"])
    assert re.search(r"long_transfer-distill was trained with other settings .*optim\.lr.*another --out", capsys.readouterr().err)


def test_recovery_figures_and_config_errors():
    curve = [{"tokens": t, "perplexity": p} for t, p in ((0, 300.0), (100, 30.0), (200, 11.5), (300, 10.5))]
    assert tokens_to_within(curve, 10.0, 0.25) == 200 and tokens_to_within(curve, 10.0, 0.1) == 300
    assert tokens_to_within(curve, 10.0, 0.01) is None
    with pytest.raises(ValueError, match="POSITION:RECIPE"):
        ConversionConfig(methods=("long",))
    with pytest.raises(ValueError, match="control='rope:plain' must be one of the trained methods"):
        ConversionConfig(methods=("long:distill",))
    with pytest.raises(ValueError, match="unknown field"):
        ConversionConfig.from_yaml("conversion_cpu", learning_rate=1.0)
    with pytest.raises(ValueError, match="transfer_distill_trainable must be a non-empty list"):
        ConversionConfig(transfer_distill_trainable=())
    with pytest.raises(ValueError, match="transfer_trainable must be a non-empty list"):
        ConversionConfig(transfer_trainable=("q_proj", ""))
    with pytest.raises(ValueError, match="transfer_distill_lr must be a positive"):
        ConversionConfig(transfer_distill_lr=0.0)
    # the control is kept in every subset, first
    shipped = ConversionConfig.from_yaml("conversion_cpu")
    assert shipped.subset(("long:transfer",)).methods == (shipped.control, "long:transfer")
    assert shipped.subset(("long:transfer", shipped.control)).methods == (shipped.control, "long:transfer")
    for field, value, message in (
            ("lr", 0.0, "lr must be a positive learning rate"), ("lora_lr", -1.0, "lora_lr must be a positive"),
            ("transfer_lr", 0, "transfer_lr must be a positive"), ("threads", 0, "threads must be a number of CPU threads >= 1"),
            ("length_multiples", (), "length_multiples must be a non-empty list"),
            ("passkey_multiples", (1, 0), "passkey_multiples must be a non-empty list of positive"),
            ("passkey_depths", (0.5, 1.5), r"passkey_depths must be a non-empty list of fractions in \[0, 1\]"),
            ("mixed_precision", "fp8", "mixed_precision='fp8' is not allowed; allowed values: no, bf16, fp16")):
        with pytest.raises(ValueError, match=message):
            ConversionConfig(**{field: value})


@pytest.mark.parametrize("name", ["conversion_cpu", "conversion_gpu", "conversion_cpu_smoke"])
def test_committed_configs_validate(name):
    config = ConversionConfig.from_yaml(name)
    assert config.control in config.methods
