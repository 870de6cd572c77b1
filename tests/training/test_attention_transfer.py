"""Attention transfer (``distill.target: attention``): hooks, the loss, what trains, the loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hf_wavepos.models.registry import architecture_of
from hf_wavepos.training import load_config, train
from hf_wavepos.training.attention_transfer import AttentionTransfer, attention_layers, freeze_except
from tests.models.tester import ARCHS, stock_model, tokens, wavepos_model

ROOT = Path(__file__).resolve().parents[2]


def _batch(length: int = 13, rows: int = 2) -> dict[str, torch.Tensor]:
    ids = tokens(rows, length)
    return {"input_ids": ids, "position_ids": torch.arange(length).expand(rows, length)}


@pytest.mark.parametrize("arch", ARCHS)
def test_each_layer_sees_the_teachers_input_and_passes_its_output_on(arch):
    teacher, student = stock_model(arch), wavepos_model(arch, "long").train()
    names = list(attention_layers(student))
    assert names == list(attention_layers(teacher)) and len(names) == 2
    transfer = AttentionTransfer(teacher, student)
    batch = _batch()
    loss = transfer.micro_batch_loss(student, batch, targets=10)
    # Recompute by hand: every converted layer applied to the teacher's own input of that layer.
    inputs, outputs = {}, {}

    def record(name):
        def hook(module, args, kwargs, out):
            inputs[name] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            outputs[name] = out[0] if isinstance(out, tuple) else out
        return hook

    hooks = [attention_layers(teacher)[n].register_forward_hook(record(n), with_kwargs=True) for n in names]
    with torch.no_grad():
        teacher.base_model(**batch, use_cache=False)
    for h in hooks:
        h.remove()
    expected = []
    for n in names:
        own = _own_output(student, n, inputs[n], batch["position_ids"])
        expected.append(((own - outputs[n]) ** 2).mean() / (outputs[n] ** 2).mean())
    torch.testing.assert_close(loss.detach(), torch.stack(expected).mean() * 10, rtol=1e-4, atol=1e-6)
    assert loss > 0


def _own_output(student, name, hidden, position_ids):
    """The student's layer ``name`` run alone on ``hidden`` (hooks are inactive outside the loss)."""
    captured = {}
    module = attention_layers(student)[name]
    h = module.register_forward_pre_hook(lambda m, a, kw: captured.setdefault("args", (a, kw)), with_kwargs=True)
    with torch.no_grad():
        student.base_model(inputs_embeds=None, input_ids=tokens(*hidden.shape[:2]), position_ids=position_ids,
                           use_cache=False)
    h.remove()
    args, kwargs = captured["args"]
    if "hidden_states" in kwargs:
        kwargs = {**kwargs, "hidden_states": hidden}
    else:
        args = (hidden, *args[1:])
    with torch.no_grad():
        out = module(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_only_the_query_key_projections_and_hooks_stay_quiet_outside(arch):
    teacher, student = stock_model(arch), wavepos_model(arch, "long")
    reference = wavepos_model(arch, "long")
    trained = freeze_except(student, architecture_of(arch).query_key_modules)
    assert 0 < trained < sum(p.numel() for p in student.parameters())
    transfer = AttentionTransfer(teacher, student)
    transfer.micro_batch_loss(student, _batch(), targets=1).backward()
    for name, param in student.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name
        if param.requires_grad:
            assert param.grad.abs().sum() > 0, name
    ids = tokens(1, 11)
    with torch.no_grad():  # outside micro_batch_loss the student is its own model
        torch.testing.assert_close(student(ids).logits, reference(ids).logits, rtol=0, atol=0)
    transfer.close()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in student.modules())


def test_bad_settings_are_refused_before_any_work():
    with pytest.raises(ValueError, match="distill.target='value' is not allowed"):
        load_config(None, ["distill.target=value"])
    with pytest.raises(ValueError, match="distill.trainable must be a non-empty list"):
        load_config(None, ["distill.trainable=[]"])
    with pytest.raises(ValueError, match="distill.trainable and lora.enabled"):
        load_config(None, ["model.pretrained=x", "distill.enabled=true", "lora.enabled=true", "distill.trainable=[q_proj]"])
    with pytest.raises(ValueError, match="train.gradient_checkpointing false"):
        load_config(None, ["model.pretrained=x", "distill.enabled=true", "distill.target=attention",
                           "train.gradient_checkpointing=true", "train.max_steps=1"])
    with pytest.raises(ValueError, match=r"matches no module of .*q_proj"):
        freeze_except(stock_model("llama"), ["query"])
    llama, gpt2 = stock_model("llama"), wavepos_model("gpt2")
    with pytest.raises(ValueError, match="differ from the model's"):
        AttentionTransfer(stock_model("gpt2"), llama)
    assert list(attention_layers(gpt2))  # a converted GPT-2 keeps its attention names


@pytest.mark.slow
def test_transfer_in_the_loop_moves_the_converted_attention_towards_the_stock_one(tmp_path, fresh_accelerate):
    from hf_wavepos.data import byte_tokenizer

    tok = byte_tokenizer()
    arch = architecture_of("llama")
    torch.manual_seed(0)
    # initializer_range 0.1: the random network's attention then depends on positions, as a trained one's does.
    stock = arch.stock_causal_lm_class(arch.stock_config_class(**{**arch.tiny_config, "vocab_size": len(tok),
        "initializer_range": 0.1, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id}))
    stock.save_pretrained(tmp_path / "stock")
    tok.save_pretrained(tmp_path / "stock")
    out = tmp_path / "run"
    config = load_config(ROOT / "recipes" / "configs" / "tiny_continue_cpu.yaml", [
        f"model.pretrained={tmp_path / 'stock'}", "model.position=long", "data.max_documents=4",
        "data.validation_size=2", "data.block_size=64", "train.max_steps=12", "train.global_batch_size=2",
        "train.per_device_batch_size=2", "optim.lr=3e-3", "optim.weight_decay=0", "checkpoint.every_steps=null",
        "eval.max_blocks=4", "log.trackers=[]", "log.every_steps=1", "distill.enabled=true",
        "distill.target=attention", f"output_dir={out}",
    ])
    result = train(config)
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.summary["trainable_parameters"] < result.summary["parameters"] / 3
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out / "final")
    assert saved.config.model_type == "wavepos_llama"
    frozen = {n: p for n, p in saved.named_parameters() if "q_proj" not in n and "k_proj" not in n}
    stock_params = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "stock").named_parameters())
    for name, param in frozen.items():
        torch.testing.assert_close(param, stock_params[name], rtol=0, atol=0, msg=name)
    # Its q/k weights changed, so the checkpoint with RoPE put back is not the stock model: a second stage
    # must name its teacher.
    from hf_wavepos.training.distill import load_teacher

    second = load_config(None, [f"model.pretrained={out / 'final'}", "distill.enabled=true", "train.max_steps=1"])
    with pytest.raises(ValueError, match="output of a training run.*Set distill.teacher"):
        load_teacher(second, torch.device("cpu"))
