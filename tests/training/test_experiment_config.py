"""Experiment YAML: loading, overrides, clear errors; the shipped experiment and launch configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_wavepos.training import TrainConfig, apply_overrides, check_recipe, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes" / "configs"
LAUNCH = ROOT / "recipes" / "accelerate"


@pytest.mark.parametrize(
    ("name", "kind", "overrides"),
    [
        ("tiny_cpu.yaml", "pretrain", []),
        ("llama_125m_wavelet_4k.yaml", "pretrain", []),
        ("llama2_7b_lora_16k.yaml", "lora", []),
        ("tiny_lora_cpu.yaml", "lora", ["model.pretrained=some/folder"]),
        ("tiny_continue_cpu.yaml", "continue", ["model.pretrained=some/folder"]),
    ],
)
def test_shipped_experiments_load_and_fit_their_recipe(name, kind, overrides):
    config = load_config(CONFIGS / name, overrides)
    check_recipe(kind, config)
    assert TrainConfig.from_dict(config.to_dict()) == config  # YAML round trip


def test_shipped_experiment_settings():
    gpu = load_config(CONFIGS / "llama_125m_wavelet_4k.yaml")
    assert gpu.data.block_size == 4096 and gpu.model.size == "125m" and gpu.train.mixed_precision == "bf16"
    lora = load_config(CONFIGS / "llama2_7b_lora_16k.yaml")
    assert lora.data.block_size == 16384 and lora.lora.train_embeddings and lora.lora.train_norms
    assert lora.model.pretrained == "meta-llama/Llama-2-7b-hf" and lora.data.streaming


def test_overrides_are_parsed_as_yaml():
    config = load_config(CONFIGS / "tiny_cpu.yaml", [
        "optim.betas=[0.8, 0.99]", "optim.lr=1e-3", "train.max_steps=7", "checkpoint.every_steps=null",
        "model.position={preset: long, train_length: 64}", "output_dir=/tmp/x",
    ])
    assert config.optim.betas == [0.8, 0.99] and config.optim.lr == 1e-3  # "1e-3" is text in YAML 1.1
    assert config.train.max_steps == 7 and config.checkpoint.every_steps is None
    assert config.model.position == {"preset": "long", "train_length": 64} and config.output_dir == "/tmp/x"
    with pytest.raises(ValueError, match="section.key=value"):
        apply_overrides({}, ["train.max_steps"])
    with pytest.raises(ValueError, match="at most two parts"):
        apply_overrides({}, ["a.b.c=1"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.max_step=5"], r"unknown config key 'train\.max_step'; did you mean 'train\.max_steps'"),
        (["trian.seed=1"], r"did you mean 'train'"),
        (["train.mixed_precision=fp8"], r"train\.mixed_precision='fp8' is not allowed; allowed values: no, bf16, fp16"),
        (["data.block_size=1"], r"data\.block_size must be an integer >= 2"),
        (["optim.lr=fast"], r"optim\.lr must be a number, got 'fast'"),
        (["train.max_tokens=1000"], r"exactly one of train\.max_steps and train\.max_tokens"),
        (["model.architecture=mamba"], r"model\.architecture='mamba' is not supported; allowed values: llama, gpt_neox, gpt2"),
        (["model.size=huge"], r"model\.size='huge' is unknown"),
        (["lora.enabled=true"], r"lora\.enabled needs model\.pretrained"),
        (["train.global_batch_size=0"], r"train\.global_batch_size must be a positive integer"),
        (["schedule.name=step"], r"schedule\.name='step' is unknown"),
        (["data.streaming=true", "data.validation_size=0.1"], r"validation_size must be a number of documents"),
        (["train.seed=yes please"], r"train\.seed must be an integer"),
    ],
)
def test_bad_experiments_are_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(CONFIGS / "tiny_cpu.yaml", overrides)


def test_recipe_kind_mismatches_are_clear_errors():
    tiny = load_config(CONFIGS / "tiny_cpu.yaml")
    with pytest.raises(ValueError, match="set model.pretrained"):
        check_recipe("continue", tiny)
    with pytest.raises(ValueError, match="set lora.enabled true"):
        check_recipe("lora", load_config(CONFIGS / "tiny_cpu.yaml", ["model.pretrained=x"]))
    with pytest.raises(ValueError, match="trains from scratch"):
        check_recipe("pretrain", load_config(CONFIGS / "llama2_7b_lora_16k.yaml"))
    with pytest.raises(ValueError, match="unknown recipe"):
        check_recipe("finetune", tiny)


@pytest.mark.parametrize(
    ("name", "distributed_type"),
    [
        ("cpu_2proc.yaml", "MULTI_GPU"),  # torchrun starts 2 processes; gloo on a CPU-only machine
        ("single_gpu.yaml", "NO"),
        ("multi_gpu_ddp.yaml", "MULTI_GPU"),
        ("fsdp.yaml", "FSDP"),
        ("deepspeed_zero3.yaml", "DEEPSPEED"),
    ],
)
def test_launch_configs_parse_with_accelerate(name, distributed_type):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(LAUNCH / name))
    assert str(config.distributed_type).split(".")[-1] == distributed_type
    if name == "deepspeed_zero3.yaml":
        ds = ROOT / config.deepspeed_config["deepspeed_config_file"]
        import json

        assert json.loads(ds.read_text())["zero_optimization"]["stage"] == 3


def test_resizing_a_scratch_model_keeps_head_dim_consistent():
    from hf_wavepos.data.tokenizers import byte_tokenizer
    from hf_wavepos.training import load_config
    from hf_wavepos.training.modeling import model_config

    base = ["model.architecture=llama", "model.size=tiny", "train.max_steps=1"]
    wide = load_config(None, base + ['model.config_overrides={"hidden_size": 128, "num_attention_heads": 4}'])
    assert model_config(wide.model, byte_tokenizer(), 64).head_dim == 32
    explicit = load_config(None, base + ['model.config_overrides={"hidden_size": 128, "num_attention_heads": 4, "head_dim": 16}'])
    assert model_config(explicit.model, byte_tokenizer(), 64).head_dim == 16
