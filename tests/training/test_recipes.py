"""End-to-end checks of the recipes, launched as users launch them (subprocesses, no network).

- ``accelerate launch`` with two CPU processes of the tiny config completes and its loss falls;
- its per-step loss matches a one-process run with the same global batch;
- a run killed right after a checkpoint and resumed ends with the same losses and weights as an
  uninterrupted run;
- the LoRA recipe's merged model reloads and gives the adapter model's logits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "configs" / "tiny_cpu.yaml"
TINY_LORA = ROOT / "recipes" / "configs" / "tiny_lora_cpu.yaml"
PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
COMMON = ["log.trackers=[]", "eval.every_steps=null"]

pytestmark = pytest.mark.slow  # subprocess launches of whole training runs


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd: list[str], log: Path, timeout: int = 240) -> None:
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{log.read_text()[-4000:]}"


def _losses(output_dir: Path) -> dict[int, float]:
    """Training loss per step (the last record wins: a resumed run rewrites the steps it redoes)."""
    losses = {}
    for line in (output_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[record["step"]] = record["loss"]
    return losses


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    _run([PYTHON, "recipes/pretrain.py", str(TINY), f"output_dir={out}", *COMMON], out.parent / "log.txt")
    return out


def test_two_cpu_processes_train_and_match_one_process(one_process_run, tmp_path):
    out = tmp_path / "run"
    _run(
        [ACCELERATE, "launch", "--config_file", "recipes/accelerate/cpu_2proc.yaml", "--main_process_port",
         str(_free_port()), "recipes/pretrain.py", str(TINY), f"output_dir={out}", *COMMON],
        tmp_path / "log.txt",
    )
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["accumulation_steps"] == 1
    one = json.loads((one_process_run / "train_summary.json").read_text())
    assert one["processes"] == 1 and one["accumulation_steps"] == 2  # same global batch of 8 blocks

    two, ref = _losses(out), _losses(one_process_run)
    assert sorted(two) == sorted(ref) == list(range(1, 31))
    assert two[30] < two[1] - 1.5, f"loss did not fall: {two[1]:.3f} -> {two[30]:.3f}"
    for step in ref:
        assert two[step] == pytest.approx(ref[step], rel=1e-4, abs=1e-5), f"step {step}"
    assert summary["val_loss"] == pytest.approx(one["val_loss"], rel=1e-4)
    assert (out / "final" / "config.json").is_file()
    assert json.loads((out / "final" / "config.json").read_text())["model_type"] == "wavepos_llama"


def test_killed_after_checkpoint_and_resumed_equals_uninterrupted(one_process_run, tmp_path):
    out = tmp_path / "run"
    cmd = [PYTHON, "recipes/pretrain.py", str(TINY), f"output_dir={out}", *COMMON]
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True,
                                start_new_session=True)
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("checkpoint saved: step 10 "):
                os.killpg(proc.pid, signal.SIGKILL)  # mid-run, right after the first checkpoint
                break
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen) + (tmp_path / "stderr.txt").read_text()[-3000:]
    assert not (out / "final").exists() and (out / "checkpoints" / "checkpoint-00000010").is_dir()

    _run(cmd + ["--resume_from_checkpoint", "latest"], tmp_path / "resume.txt")
    assert "resumed from" in (tmp_path / "resume.txt").read_text()
    resumed, ref = _losses(out), _losses(one_process_run)
    for step in range(11, 31):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), f"step {step}"
    a = load_file(str(out / "final" / "model.safetensors"))
    b = load_file(str(one_process_run / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7, msg=name)


def test_lora_recipe_merged_model_matches_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    import hf_wavepos
    from hf_wavepos.data import byte_tokenizer

    base_dir = tmp_path / "base"
    tok = byte_tokenizer()
    torch.manual_seed(0)
    stock = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    ))
    stock.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)

    out = tmp_path / "run"
    _run([PYTHON, "recipes/lora_extend.py", str(TINY_LORA), f"model.pretrained={base_dir}", f"output_dir={out}"],
         tmp_path / "log.txt")
    losses = _losses(out)
    assert losses[12] < losses[1], losses
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["trainable_parameters"] < summary["parameters"] / 2

    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    assert merged.config.model_type == "wavepos_llama"
    base = hf_wavepos.apply_wavepos(AutoModelForCausalLM.from_pretrained(base_dir), "oka2025")
    adapted = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = torch.randint(0, len(tok), (2, 300), generator=torch.Generator().manual_seed(1))  # past block_size
    with torch.no_grad():
        want, got = adapted(ids).logits, merged(ids).logits
        untrained = hf_wavepos.apply_wavepos(AutoModelForCausalLM.from_pretrained(base_dir), "oka2025")(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (untrained - want).abs().max() > 1e-2  # the adapter (and the trained norms/embeddings) changed the model


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, run bench/train_gpu.py itself")
def test_gpu_training_benchmark_script_in_cpu_smoke_mode(tmp_path):
    """bench/train_gpu.py end to end on the tiny config: two methods, the second reusing the first's
    tokenizer, one JSON naming the device."""
    out, work = tmp_path / "train_gpu.json", tmp_path / "work"
    _run([PYTHON, "bench/train_gpu.py", "--cpu-smoke", "--out", str(out), "--work", str(work)], tmp_path / "log.txt")
    result = json.loads(out.read_text())
    assert [r["position"] for r in result["runs"]] == ["oka2025", "rope"]
    assert all(r["tokens_per_second"] > 0 and r["distributed_type"] == "NO" for r in result["runs"])
    used = (work / "rope" / "train_config.yaml").read_text()
    assert f"tokenizer: {work / 'oka2025' / 'tokenizer'}" in used
