"""The extrapolation benchmark and the demo built on it (quick sizes), and the shipped configs."""

import json

import pytest

from hf_wavepos.cli import main


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys):
    from hf_wavepos.experiments.demo import QUICK, run_demo

    summary = run_demo(tmp_path, quick=True)
    assert set(summary["perplexity"]) == set(QUICK.methods)
    for rows in summary["perplexity"].values():
        assert [r["length"] for r in rows] == summary["lengths"] and all(r["perplexity"] > 1 for r in rows)
    assert set(summary["ratio_to_train_length"]["rope"]) == {"1x", "2x", "4x"}
    assert summary["ratio_to_train_length"]["rope"]["1x"] == 1.0
    for name in ("demo.json", "eval/perplexity.png", "eval/extrapolation.json", "hub/wavepos-demo-llama/README.md",
                 "hub/wavepos-demo-llama/model.safetensors", "hub/wavepos-demo-llama/modeling_wavepos_llama.py"):
        assert (tmp_path / name).stat().st_size > 0, name

    # Re-scoring the run's models (no training): same files -> the same numbers; fewer files -> fewer.
    run = tmp_path / "eval"
    assert main(["bench", "extrapolation", "--rescore", str(run), "--eval-documents", str(QUICK.eval_documents),
                 "--out", str(tmp_path / "same")]) == 0
    same = json.loads((tmp_path / "same" / "extrapolation.json").read_text())
    assert same["perplexity"] == summary["perplexity"] and same["training"] == summary["training"]
    assert main(["bench", "extrapolation", "--rescore", str(run), "--eval-documents", "1", "--out",
                 str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "extrapolation.json").read_text())
    assert one["eval_documents"] == 1 and {r["num_documents"] for rows in one["perplexity"].values() for r in rows} == {1}
    for args, message in ((["--eval-documents", "1", "--out", str(run)], "is the run folder"),
                          (["--out", str(tmp_path / "x")], "--rescore needs --eval-documents N"),
                          (["--eval-documents", "1", "--out", str(tmp_path / "y"), "--rescore", str(tmp_path)],
                           "is not a finished `wavepos bench extrapolation` run")):
        with pytest.raises(SystemExit):
            main(["bench", "extrapolation", "--rescore", str(run), *args])
        assert message in capsys.readouterr().err


def test_extrapolation_configs_validate(tmp_path):
    from hf_wavepos.experiments.extrapolation import ExtrapolationConfig

    for name in ("extrapolation_cpu", "extrapolation_gpu.yaml"):  # shipped names, with or without .yaml
        config = ExtrapolationConfig.from_yaml(name)
        assert config.lengths[-1] == 16 * config.block_size
    with pytest.raises(FileNotFoundError, match="shipped configs: .*extrapolation_cpu, extrapolation_gpu, retrieval_cpu"):
        ExtrapolationConfig.from_yaml("extrapolation_tpu")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [rope, wavelets]\n")
    with pytest.raises(ValueError, match=r"methods \['wavelets'\] are unknown; allowed values: nope, rope"):
        ExtrapolationConfig.from_yaml(bad)
    bad.write_text("step: 3\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['step'\]"):
        ExtrapolationConfig.from_yaml(bad)


@pytest.mark.parametrize("text, message", [
    ("transfer_trainable: q_proj\n", r"transfer_trainable must be a list .*got 'q_proj'"),
    ("transfer_distill_lr: fast\n", r"transfer_distill_lr must be a number, got 'fast'"),
    ("methods: rope:plain\n", r"methods must be a list .*got 'rope:plain'"),
    ("passkey_depths: [0.5, deep]\n", r"passkey_depths\[1\] must be a number, got 'deep'"),
    ("steps: 1.5\n", r"steps must be an integer, got 1.5"),
    ("gradient_checkpointing: 1\n", r"gradient_checkpointing must be true or false, got 1"),
    ("- steps\n- 3\n", r"bad.yaml must hold a mapping of settings .*got a list"),
    ("steps: [1\n", r"bad.yaml is not valid YAML"),
])
def test_bench_config_types_are_checked(tmp_path, text, message):
    """read_bench_config checks every value against its field's annotation, naming field, type and value."""
    from hf_wavepos.experiments.conversion_config import ConversionConfig

    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        ConversionConfig.from_yaml(bad)


def test_bench_config_types_extrapolation(tmp_path):
    from hf_wavepos.experiments.extrapolation import ExtrapolationConfig
    from hf_wavepos.experiments.retrieval import RetrievalConfig

    bad = tmp_path / "bad.yaml"
    bad.write_text("length_multiples: 16\n")
    with pytest.raises(ValueError, match=r"length_multiples must be a list .*got 16"):
        ExtrapolationConfig.from_yaml(bad)
    bad.write_text("passkey_fraction: half\n")
    with pytest.raises(ValueError, match=r"passkey_fraction must be a number, got 'half'"):
        RetrievalConfig.from_yaml(bad)
    bad.write_text("lr: 1e-3\nsteps: 3\nmethods: [rope]\n")  # numbers written as text are numbers
    assert ExtrapolationConfig.from_yaml(bad).lr == 1e-3


def test_shared_value_checks_of_every_bench_config():
    """threads 0 was once silently ignored; the same checks hold for every benchmark config."""
    from hf_wavepos.experiments.extrapolation import ExtrapolationConfig
    from hf_wavepos.experiments.retrieval import RetrievalConfig

    for cls in (ExtrapolationConfig, RetrievalConfig):
        for field, value, message in (("threads", 0, "threads must be a number of CPU threads >= 1"),
                                      ("lr", 0.0, "lr must be a positive learning rate"),
                                      ("length_multiples", (), "length_multiples must be a non-empty list"),
                                      ("mixed_precision", "fp4", "allowed values: no, bf16, fp16")):
            with pytest.raises(ValueError, match=message):
                cls(**{field: value})
