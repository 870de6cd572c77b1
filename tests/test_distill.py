"""Self-distillation (``distill`` section): the KL term, the default teacher, and runs of the loop."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from hf_wavepos import apply_wavepos  # noqa: E402
from hf_wavepos.data import byte_tokenizer  # noqa: E402
from hf_wavepos.data.packing import IGNORE_INDEX  # noqa: E402
from hf_wavepos.training import load_config, token_loss_sum, train  # noqa: E402
from hf_wavepos.training.distill import Distiller, distill_kl_sum, load_teacher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def fresh_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_kl_sum_matches_the_definition_on_scored_positions_only():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 7, 11, generator=gen), torch.randn(2, 7, 11, generator=gen)
    labels = torch.randint(0, 11, (2, 7), generator=gen)
    labels[0, 3] = labels[1, 1] = IGNORE_INDEX  # document starts: positions 2 (row 0) and 0 (row 1) not scored
    for temperature in (1.0, 2.5):
        expected = 0.0
        for b in range(2):
            for i in range(6):
                if labels[b, i + 1] == IGNORE_INDEX:
                    continue
                p = F.softmax(teacher[b, i].double() / temperature, -1)
                q = F.softmax(student[b, i].double() / temperature, -1)
                expected += float((p * (p.log() - q.log())).sum()) * temperature**2
        got = distill_kl_sum(student, teacher, labels, temperature)
        assert got.dtype == torch.float32 and abs(float(got) - expected) < 1e-4 * max(1.0, expected)
    assert float(distill_kl_sum(teacher, teacher, labels)) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="same tokenizer|share the student's tokenizer"):
        distill_kl_sum(student, teacher[..., :10], labels)


def test_loss_mixes_kl_and_next_token_loss():
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2)).eval()
    batch = {"input_ids": torch.randint(0, 40, (2, 9)), "position_ids": torch.arange(9).expand(2, 9)}
    batch["labels"] = batch["input_ids"].clone()
    logits = torch.randn(2, 9, 40)
    ce = token_loss_sum(logits, batch["labels"])
    with torch.no_grad():
        kl = distill_kl_sum(logits, teacher(input_ids=batch["input_ids"]).logits, batch["labels"])
    mixed = Distiller(teacher, 0.25, 1.0).loss_sum(ce, logits, batch)
    torch.testing.assert_close(mixed, 0.25 * kl + 0.75 * ce)
    torch.testing.assert_close(Distiller(teacher, 1.0, 1.0).loss_sum(ce, logits, batch), kl)


def _stock_llama(folder: Path, tok, seed: int = 0) -> LlamaForCausalLM:
    # initializer_range 0.1 (not 0.02): the random network's predictions then depend on positions, so
    # removing RoPE changes them (a KL of about 0.1 nats a token), as in a trained model.
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        initializer_range=0.1,
    ))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def test_default_teacher_is_the_checkpoint_with_its_stock_positions(tmp_path):
    tok = byte_tokenizer()
    stock = _stock_llama(tmp_path / "stock", tok).eval()
    apply_wavepos(AutoModelForCausalLM.from_pretrained(tmp_path / "stock"), "nope").save_pretrained(tmp_path / "nope")
    ids = torch.randint(0, 200, (1, 23))
    for pretrained in ("stock", "nope"):  # a converted checkpoint is reverted to RoPE for the teacher
        config = load_config(None, [f"model.pretrained={tmp_path / pretrained}", "distill.enabled=true"])
        teacher = load_teacher(config, torch.device("cpu"))
        assert teacher.config.model_type == "llama"
        with torch.no_grad():
            torch.testing.assert_close(teacher(ids).logits, stock(ids).logits, rtol=0, atol=0)

    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_head=2, n_layer=1)).save_pretrained(tmp_path / "gpt2")
    apply_wavepos(AutoModelForCausalLM.from_pretrained(tmp_path / "gpt2"), "nope").save_pretrained(tmp_path / "wgpt2")
    config = load_config(None, [f"model.pretrained={tmp_path / 'wgpt2'}", "distill.enabled=true"])
    with pytest.raises(ValueError, match="does not keep the learned wpe table; set distill.teacher"):
        load_teacher(config, torch.device("cpu"))
    with pytest.raises(ValueError, match="distill.weight must be in"):
        load_config(None, ["distill.weight=0"])


def _run(tmp_path: Path, name: str, position: str, *extra: str) -> list[dict]:
    out = tmp_path / name
    config = load_config(ROOT / "recipes" / "configs" / "tiny_continue_cpu.yaml", [
        f"model.pretrained={tmp_path / 'stock'}", f"model.position={position}", "data.max_documents=4",
        "data.validation_size=2", "data.block_size=64", "train.max_steps=6", "train.global_batch_size=2",
        "train.per_device_batch_size=2", "optim.lr=3e-3", "checkpoint.every_steps=null", "eval.max_blocks=4",
        "eval.at_start=true", "log.trackers=[]", "log.every_steps=1", f"output_dir={out}", *extra,
    ])
    train(config)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_distillation_in_the_loop(tmp_path, fresh_accelerate):
    """The teacher sees exactly the student's blocks and positions: the stock model distilled from
    itself has zero loss; trained on the KL alone, a model moves towards another teacher."""
    tok = byte_tokenizer()
    _stock_llama(tmp_path / "stock", tok)
    same = _run(tmp_path, "same", "rope", "distill.enabled=true", "optim.lr=1e-12")
    assert same[0] == {"step": 0, "val_loss": same[0]["val_loss"]} and same[0]["val_loss"] > 0  # eval.at_start
    assert abs(next(r for r in same if "loss" in r)["loss"]) < 1e-5

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    other = _stock_llama(tmp_path / "other", tok, seed=1).eval()
    _run(tmp_path, "student", "rope", "distill.enabled=true", f"distill.teacher={tmp_path / 'other'}",
         "train.max_steps=10", "optim.weight_decay=0")
    ids = torch.tensor([tok("def f(x):\n    return [x * i for i in range(10)]\n" * 2).input_ids])
    start = AutoModelForCausalLM.from_pretrained(tmp_path / "stock").eval()
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "student" / "final").eval()
    with torch.no_grad():
        teacher = other(ids).logits
        before = distill_kl_sum(start(ids).logits, teacher, ids)
        after = distill_kl_sum(trained(ids).logits, teacher, ids)
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize(("name", "recipe"), [("smollm2_135m_recalibrate_cpu.yaml", "continue"),
                                              ("smollm2_135m_recalibrate_gpu.yaml", "continue"),
                                              ("smollm2_135m_recalibrate_lora_cpu.yaml", "lora"),
                                              ("smollm2_135m_transfer_cpu.yaml", "continue"),
                                              ("smollm2_135m_transfer_gpu.yaml", "continue")])
def test_recalibration_recipes_validate(name, recipe):
    from hf_wavepos.training import check_recipe

    config = load_config(ROOT / "recipes" / "configs" / name, ["model.pretrained=converted"])
    check_recipe(recipe, config)
    assert config.distill.enabled and config.model.position == "keep" and config.eval.at_start
