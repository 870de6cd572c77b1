"""Training components: batch split, schedule, loss, checkpoints, model checks, LoRA, and in-process runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

import hf_wavepos  # noqa: E402
from hf_wavepos.config import WavePosConfig  # noqa: E402
from hf_wavepos.data import byte_tokenizer, iter_packed_blocks, load_text_splits  # noqa: E402
from hf_wavepos.training import (  # noqa: E402
    BatchPlan,
    PackedBatches,
    StreamingBatches,
    check_model_inputs,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_config,
    lora_config,
    resolve_position,
    save_checkpoint,
    token_loss_sum,
    train,
    wrap_lora,
)
from hf_wavepos.training.experiment_config import LoraSection, ScheduleSection  # noqa: E402
from hf_wavepos.training.checkpoint import resolve_resume  # noqa: E402
from hf_wavepos.training.schedule import lr_lambda  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "configs" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture()
def fresh_accelerate():
    """Runs Accelerate in this process; resets its singletons afterwards so other tests start clean."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def tiny_llama(tok, **kwargs) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kwargs,
    ))


# ----------------------------------------------------------------------------- batches


def _blocks(n: int, length: int = 8) -> datasets.Dataset:
    ids = np.arange(n * length).reshape(n, length)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "position_ids": np.tile(np.arange(length), (n, 1)).tolist()})


def test_batch_plan_splits_the_global_batch_evenly():
    plan = BatchPlan(8, 2, 2, 1)
    assert plan.accumulation_steps == 2 and plan.local_slices() == [slice(2, 4), slice(6, 8)]
    with pytest.raises(ValueError, match="not a multiple of train.per_device_batch_size x processes = 4 x 3 = 12"):
        BatchPlan(8, 4, 3, 0)


def test_global_batches_do_not_depend_on_the_process_count():
    blocks = _blocks(40)
    one = PackedBatches(blocks, BatchPlan(8, 4, 1, 0), seed=3)
    two = [PackedBatches(blocks, BatchPlan(8, 4, 2, p), seed=3) for p in range(2)]
    for step in (0, 1, 4, 5, 9):  # 5 steps per epoch: 4 -> 5 crosses into the next permutation
        want = sorted(torch.cat([mb["input_ids"] for mb in one.micro_batches(step)]).view(-1).tolist())
        got = sorted(torch.cat([mb["input_ids"] for b in two for mb in b.micro_batches(step)]).view(-1).tolist())
        assert want == got
    seen = np.concatenate([one.global_indices(s) for s in range(5)])
    assert sorted(seen.tolist()) == list(range(40))  # one epoch visits every block once
    assert not np.array_equal(one.global_indices(0), one.global_indices(5))  # a new order per epoch
    with pytest.raises(ValueError, match="fewer than one global batch"):
        PackedBatches(_blocks(3), BatchPlan(8, 4, 1, 0), seed=0)


def test_streaming_batches_resume_where_they_stopped(tok, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i} " + "abc " * (i % 7 + 3)}) + "\n" for i in range(30)))
    splits = load_text_splits(data_files=str(path), validation_size=2, streaming=True)

    def make_stream(epoch):
        return iter_packed_blocks(splits.train, tok, 16)

    plan = BatchPlan(4, 2, 1, 0)
    straight = StreamingBatches(make_stream, plan)
    batches = [straight.micro_batches(s) for s in range(20)]  # ~13 steps per pass: runs into epoch 1
    assert straight.epoch >= 1
    resumed = StreamingBatches(make_stream, plan)
    for step in (7, 8, 19):
        for a, b in zip(resumed.micro_batches(step), batches[step]):
            assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    with pytest.raises(ValueError, match="in order"):
        resumed.micro_batches(3)
    with pytest.raises(ValueError, match="yields no complete block"):
        StreamingBatches(lambda epoch: iter(()), plan).micro_batches(0)


# ----------------------------------------------------------------------------- schedule and loss


def test_schedule_warms_up_then_decays_to_the_floor():
    f = lr_lambda(ScheduleSection(name="cosine", warmup_steps=4, min_lr_ratio=0.1), total_steps=20)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(12) == pytest.approx(0.55) and f(20) == pytest.approx(0.1)
    g = lr_lambda(ScheduleSection(name="linear", warmup_steps=0, min_lr_ratio=0.0), total_steps=10)
    assert g(5) == pytest.approx(0.5) and g(10) == 0.0
    assert lr_lambda(ScheduleSection(name="constant", warmup_steps=2), 10)(7) == 1.0


def test_token_loss_sum_is_the_model_loss_times_the_target_count(tok):
    model = tiny_llama(tok).eval()
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, [0, 7, 13]] = -100
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    n = int((labels[:, 1:] != -100).sum())
    assert float(token_loss_sum(out.logits, labels)) / n == pytest.approx(float(out.loss), rel=1e-5)


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoints_survive_an_interrupted_save(tmp_path, fresh_accelerate, tok):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(tiny_llama(tok))
    first = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(accelerator, tmp_path, 1, {"step": 1}, keep_last=2)

    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    def interrupt(models, weights, output_dir):  # the process dies in the middle of writing step 2
        Path(output_dir, "half_written.bin").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt

    handle = accelerator.register_save_state_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, 2, {"step": 2}, keep_last=2)
    handle.remove()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]  # the half-written step 2 is invisible
    assert (tmp_path / "checkpoints" / ".tmp-checkpoint-00000002").is_dir()
    assert load_checkpoint(accelerator, latest_checkpoint(tmp_path)) == {"step": 1}
    for k, v in model.state_dict().items():
        assert torch.equal(v, first[k]), k

    for step in (2, 3, 4):
        save_checkpoint(accelerator, tmp_path, step, {"step": step}, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-00000003", "checkpoint-00000004"]
    assert resolve_resume("latest", tmp_path).name == "checkpoint-00000004"
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoints" / "nope"), tmp_path)


# ----------------------------------------------------------------------------- model checks


def test_resolve_position():
    assert resolve_position("rope", 512) == "rope" and resolve_position("keep", 512) == "keep"
    assert resolve_position("oka2025", 512) == WavePosConfig.from_preset("oka2025")
    assert resolve_position("long", 4096).train_length == 4096  # log-n scaling follows the block size
    assert resolve_position({"preset": "long", "train_length": 100}, 4096).train_length == 100
    assert resolve_position({"method": "alibi"}, 64).method == "alibi"
    with pytest.raises(ValueError, match="unknown wavepos preset 'oka2026'.*'rope' and 'keep' are also allowed"):
        resolve_position("oka2026", 512)
    with pytest.raises(ValueError, match="unknown wavepos field"):
        resolve_position({"scales": 8}, 512)


def test_model_input_checks(tok):
    llama = tiny_llama(tok).config
    check_model_inputs(llama, tok, 4096, WavePosConfig())
    with pytest.raises(ValueError, match="tokenizer/model mismatch: the tokenizer has 257 tokens but the model's vocabulary holds 200"):
        check_model_inputs(LlamaConfig(vocab_size=200, eos_token_id=256), tok, 64, "rope")
    with pytest.raises(ValueError, match="tokenizer/model mismatch: the tokenizer has 257 tokens but the model was built for 32000"):
        check_model_inputs(LlamaConfig(vocab_size=32000, eos_token_id=2), tok, 64, "rope")
    with pytest.raises(ValueError, match="EOS id is 256, the model's is 2"):
        check_model_inputs(LlamaConfig(vocab_size=300, eos_token_id=2), tok, 64, "rope")
    gpt2 = GPT2Config(vocab_size=257, n_positions=128, n_embd=64, n_head=4, n_layer=1, eos_token_id=256, attn_pdrop=0.0)
    with pytest.raises(ValueError, match=r"data.block_size=256 is above what GPT-2's learned absolute positions can train at \(n_positions=128\)"):
        check_model_inputs(gpt2, tok, 256, "rope")
    check_model_inputs(gpt2, tok, 256, WavePosConfig())  # wavelets: no maximum length
    with pytest.raises(ValueError, match="num_scales=16 does not divide head_dim=12"):
        check_model_inputs(LlamaConfig(vocab_size=257, hidden_size=48, num_attention_heads=4, eos_token_id=256), tok, 64,
                           WavePosConfig.from_preset("long"))
    dropout = GPT2Config(vocab_size=257, n_embd=64, n_head=4, n_layer=1, eos_token_id=256)  # attn_pdrop 0.1
    with pytest.raises(ValueError, match=r"attn_pdrop=0.1 is attention dropout.*config_overrides: \{attn_pdrop: 0.0\}"):
        check_model_inputs(dropout, tok, 64, WavePosConfig())
    converted = hf_wavepos.apply_wavepos(tiny_llama(tok), "oka2025").config
    with pytest.raises(ValueError, match="already a wavepos_llama model.*model.position: keep"):
        check_model_inputs(converted, tok, 64, "rope")


# ----------------------------------------------------------------------------- LoRA


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_trains_adapters_embeddings_and_norms(tok, arch):
    if arch == "llama":
        model = tiny_llama(tok)
    else:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=257, n_embd=64, n_head=4, n_layer=2, n_positions=64))
    model = hf_wavepos.apply_wavepos(model, "oka2025")
    tied = arch == "gpt2"  # GPT-2 ties wte and lm_head: a trained embedding copy would untie them
    section = LoraSection(enabled=True, r=4, train_embeddings=not tied, train_norms=True)
    peft_model = wrap_lora(model, section)
    trained = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trained)
    embed, norm = ("embed_tokens", "input_layernorm") if arch == "llama" else ("wte", "ln_1")
    assert any(embed in n and "modules_to_save" in n for n in trained) == (not tied)
    assert any(norm in n and "modules_to_save" in n for n in trained)
    assert not any("mlp" in n for n in trained)
    if tied:
        assert lora_config(section, "wavepos_gpt2").fan_in_fan_out
        with pytest.raises(ValueError, match="tied input/output embeddings"):
            lora_config(LoraSection(enabled=True, train_embeddings=True), "gpt2", tied_embeddings=True)
    with pytest.raises(ValueError, match="no LoRA layout for model type 'mamba'"):
        lora_config(LoraSection(enabled=True), "mamba")
    assert lora_config(LoraSection(enabled=True, target_modules=["in_proj"]), "mamba").target_modules == {"in_proj"}


# ----------------------------------------------------------------------------- in-process runs


def _save_stock_gpt2(folder: Path, tok) -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tok), n_embd=64, n_head=4, n_layer=2, n_positions=128, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    ))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.position=oka2026"], "unknown wavepos preset 'oka2026'"),
        (["data.text_column=body"], r"text_column='body' is not a column .*available columns: \['text'\]"),
        (["model.tokenizer=bpe:300"], "tokenizer/model mismatch"),
        (["model.position=rope", "data.block_size=256"], "above what GPT-2's learned absolute positions can train at"),
        (["train.per_device_batch_size=3"], "not a multiple of train.per_device_batch_size"),
    ],
)
def test_bad_inputs_fail_before_any_compute(tmp_path, tok, fresh_accelerate, overrides, message):
    base = tmp_path / "gpt2"
    _save_stock_gpt2(base, tok)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": "x = 1\n" * (i + 5)}) + "\n" for i in range(20)))
    out = tmp_path / "run"
    config = load_config(ROOT / "recipes" / "configs" / "tiny_continue_cpu.yaml", [
        f"model.pretrained={base}", f"data.data_files={docs}", "data.validation_size=2", f"output_dir={out}",
        "log.trackers=[]", *overrides,
    ])
    with pytest.raises(ValueError, match=message):
        train(config)
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
@pytest.mark.parametrize(("flag", "backend"), [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_sharded_launch_config_without_gpu_is_refused(tmp_path, fresh_accelerate, monkeypatch, flag, backend):
    """Accelerate would silently train unsharded data parallel; the loop says so and stops first."""
    monkeypatch.setenv(flag, "true")
    out = tmp_path / "run"
    config = load_config(ROOT / "recipes" / "configs" / "tiny_cpu.yaml", [f"output_dir={out}", "log.trackers=[]"])
    with pytest.raises(ValueError, match=f"asks for {backend} .* no GPU .*recipes/accelerate/cpu_2proc.yaml"):
        train(config)
    assert not out.exists()


def test_continued_pretraining_in_process_streams_and_logs(tmp_path, tok, fresh_accelerate):
    """GPT-2 (n_positions 128) converted to wavelets trains at 256 tokens, streaming JSON lines."""
    base = tmp_path / "gpt2"
    _save_stock_gpt2(base, tok)
    docs = tmp_path / "docs.jsonl"
    source = sorted((Path(datasets.__file__).parent).glob("*.py"))[:12]
    docs.write_text("".join(json.dumps({"body": p.read_text()}) + "\n" for p in source))
    out = tmp_path / "run"
    config = load_config(ROOT / "recipes" / "configs" / "tiny_continue_cpu.yaml", [
        f"model.pretrained={base}", f"data.data_files={docs}", "data.text_column=body", "data.streaming=true",
        "data.validation_size=2", "train.max_steps=null", "train.max_tokens=4000", f"output_dir={out}",
    ])
    result = train(config)
    assert result.steps == 4  # ceil(4000 / (4 blocks x 256 tokens))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]
    saved = json.loads((out / "final" / "config.json").read_text())
    assert saved["model_type"] == "wavepos_gpt2" and saved["n_positions"] == 128
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    reloaded = hf_wavepos.WavePosGPT2LMHeadModel.from_pretrained(out / "final").eval()
    with torch.no_grad():
        assert torch.isfinite(reloaded(torch.randint(0, 256, (1, 300))).logits).all()  # past n_positions
