"""Model integration: every registered architecture with wavelet positions (tiny models, no Hub)."""

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import hf_wavepos
from hf_wavepos import WavePosConfig, apply_wavepos, revert_wavepos, wavelet_table
from hf_wavepos.attention import reference_attention
from hf_wavepos.models.registry import architecture_of
from tests.models.tester import ARCHS, VOCAB, project_qkv, stock_model, tokens, wavepos_model


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_equals_hand_computation_with_reference(arch):
    model = wavepos_model(arch)
    ids = tokens(2, 19)
    captured = []
    attention_modules = [m for m in model.modules() if isinstance(m, hf_wavepos.models.common.WavePosAttentionMixin)]
    assert len(attention_modules) == 2
    hooks = [m.register_forward_hook(lambda mod, args, kwargs, out: captured.append((mod, args, kwargs, out)),
                                     with_kwargs=True) for m in attention_modules]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    table = wavelet_table(WavePosConfig(), architecture_of(arch).head_dim(model.config), 19)
    for module, args, kwargs, out in captured:
        hidden = args[0] if args else kwargs["hidden_states"]
        with torch.no_grad():
            q, k, v, out_proj = project_qkv(module, hidden)
            want = reference_attention(q, k, v, table, scaling=module.scaling)
            want = out_proj(want.transpose(1, 2).reshape(*hidden.shape[:2], -1))
        torch.testing.assert_close(out[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_apply_then_revert_is_bit_identical(arch):
    model = stock_model(arch)
    ids = tokens(2, 17)
    with torch.no_grad():
        before = model(ids).logits
        stock_type = model.config.model_type
        apply_wavepos(model, "long")
        assert model.config.model_type == f"wavepos_{stock_type}"
        assert model.config.wavepos == WavePosConfig.from_preset("long").to_dict()
        converted = model(ids).logits
        revert_wavepos(model)
        after = model(ids).logits
    assert not torch.allclose(converted, before)
    assert torch.equal(after, before)
    assert model.config.model_type == stock_type and not hasattr(model.config, "wavepos")
    assert not any(type(m).__module__.startswith("hf_wavepos") for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_apply_and_revert_after_from_pretrained(arch, tmp_path):
    stock_model(arch).save_pretrained(tmp_path / "stock")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "stock").eval()
    ids = tokens(1, 9)
    with torch.no_grad():
        before = model(ids).logits
        apply_wavepos(model, "oka2025")
        assert model.config.model_type == f"wavepos_{arch}"
        model.save_pretrained(tmp_path / "converted")
        assert AutoModelForCausalLM.from_pretrained(tmp_path / "converted").config.model_type == f"wavepos_{arch}"
        revert_wavepos(model)
        assert model.config.model_type == arch
        assert torch.equal(model(ids).logits, before)


def test_gpt2_has_no_length_limit_and_no_wpe_in_state_dict():
    model = wavepos_model("gpt2")
    assert not any("wpe" in k for k in model.state_dict())
    with torch.no_grad():
        logits = model(tokens(1, 80)).logits  # n_positions is 32
    assert torch.isfinite(logits).all()


def greedy_without_cache(model, ids, steps):
    ids = ids.clone()
    for _ in range(steps):
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    return ids


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_with_cache_equals_no_cache_argmax(arch, cache):
    model = wavepos_model(arch, preset="long")  # log-n scaling (train_length 512) stays 1 here
    model.config.wavepos = WavePosConfig.from_preset("long", train_length=8).to_dict()  # exercise it
    ids = tokens(1, 11)
    kwargs = {"cache_implementation": "static"} if cache == "static" else {}
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, **kwargs)
    assert torch.equal(out, greedy_without_cache(model, ids, 8))


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_batch_equals_each_sequence_alone(arch):
    model = wavepos_model(arch)
    short, long = tokens(1, 9, seed=3), tokens(1, 14, seed=4)
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(batch)
    mask[0, :5] = 0
    with torch.no_grad():
        both = model(batch, attention_mask=mask).logits
        alone_short = model(short).logits
        alone_long = model(long).logits
    torch.testing.assert_close(both[0, 5:], alone_short[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1], alone_long[0], rtol=1e-5, atol=1e-5)
    generated = model.generate(batch, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    single = model.generate(short, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(generated[0, 5:], single[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_documents_equal_separate_runs(arch):
    model = wavepos_model(arch)
    a, b = tokens(1, 7, seed=5), tokens(1, 12, seed=6)
    packed = torch.cat([a, b], 1)
    position_ids = torch.cat([torch.arange(7), torch.arange(12)])[None]
    with torch.no_grad():
        together = model(packed, position_ids=position_ids).logits
        torch.testing.assert_close(together[:, :7], model(a).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(together[:, 7:], model(b).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_and_auto_classes(arch, tmp_path):
    model = wavepos_model(arch, preset="oka2025-4k")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.wavepos == model.config.wavepos
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    ids = tokens(2, 13)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert not list(tmp_path.glob("*.bin")) and list(tmp_path.glob("*.safetensors"))


REMOTE_SCRIPT = textwrap.dedent('''
    import sys
    sys.modules["hf_wavepos"] = None  # the plugin is not importable here
    import torch
    from transformers import AutoModelForCausalLM
    folder, ids_path, out_path = sys.argv[1:4]
    try:
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False)
    except ValueError as err:
        assert "trust_remote_code" in str(err), err
    else:
        raise SystemExit("loaded without trust_remote_code")
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    ids = torch.load(ids_path)
    with torch.no_grad():
        logits = model(ids).logits
    generated = model.generate(ids[:1], max_new_tokens=4, do_sample=False, pad_token_id=0)
    torch.save({"logits": logits, "generated": generated, "module": type(model).__module__}, out_path)
''')


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_remote_code_loads_without_the_plugin(arch, tmp_path):
    model = wavepos_model(arch, preset="long")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    source = (folder / f"modeling_wavepos_{arch}.py").read_text()
    assert "import hf_wavepos" not in source and "from hf_wavepos" not in source
    assert "register_backend(\"triton\"" not in source and "register_backend(\"flex\"" not in source
    ids = tokens(2, 15)
    torch.save(ids, tmp_path / "ids.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
                   check=True, env=env, cwd=tmp_path, capture_output=True)
    result = torch.load(tmp_path / "out.pt")
    assert result["module"].startswith("transformers_modules")
    with torch.no_grad():
        assert torch.equal(result["logits"], model(ids).logits)
    assert torch.equal(result["generated"], model.generate(ids[:1], max_new_tokens=4, do_sample=False, pad_token_id=0))


def test_backend_choice_follows_attn_implementation():
    stock = stock_model("llama")
    ids = tokens(1, 21)
    with torch.no_grad():
        outputs = {}
        for implementation in ("eager", "sdpa", "wavepos_reference", "wavepos_chunked"):
            model = apply_wavepos(copy.deepcopy(stock), "oka2025")
            model.set_attn_implementation(implementation)
            outputs[implementation] = model(ids).logits
    for implementation, logits in outputs.items():
        torch.testing.assert_close(logits, outputs["eager"], rtol=1e-5, atol=1e-5, msg=implementation)
    # The same names work at construction, with a padding mask (transformers builds the mask for them).
    config = apply_wavepos(copy.deepcopy(stock), "oka2025").config
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    padded = {}
    for implementation in ("eager", "wavepos_chunked"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=implementation).eval()
        model.load_state_dict(stock.state_dict())
        with torch.no_grad():
            padded[implementation] = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(padded["wavepos_chunked"], padded["eager"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="serves wavepos models only"):
        stock.set_attn_implementation("wavepos_chunked")
        stock(ids)


@pytest.mark.parametrize("method", ["alibi", "nope"])
def test_peer_methods(method):
    model = wavepos_model("llama", preset=method)
    ids = tokens(2, 16)
    with torch.no_grad():
        fast = model(ids).logits
        model.set_attn_implementation("eager")
        exact = model(ids).logits
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)
    assert model.config.wavepos["method"] == method


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown wavepos preset 'okay'"):
        apply_wavepos(stock_model("llama"), "okay")
    # the preset-dict form of the CLI and recipes is accepted here too
    assert apply_wavepos(stock_model("llama"), {"preset": "long", "num_scales": 4}).config.wavepos["num_scales"] == 4
    odd = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=60, num_hidden_layers=1, num_attention_heads=5,
                                       intermediate_size=32))
    with pytest.raises(ValueError, match="num_scales=8 does not divide head_dim=12"):
        apply_wavepos(odd, "oka2025")
    with pytest.raises(ValueError, match="flash-attention kernels take no relative positional term.*'sdpa'"):
        wavepos_model("llama").set_attn_implementation("flash_attention_2")
    with pytest.raises(ValueError, match="flash-attention kernels take no relative positional term"):
        AutoModelForCausalLM.from_config(hf_wavepos.WavePosLlamaConfig(
            vocab_size=VOCAB, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=32),
            attn_implementation="flash_attention_2")
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                   num_attention_heads=2, word_embed_proj_dim=16))
    with pytest.raises(ValueError, match="model_type 'opt' is not supported by hf_wavepos; supported: gpt2, gpt_neox, llama"):
        apply_wavepos(opt)
    with pytest.raises(ValueError, match="method='rope' is not allowed.*stock model"):
        apply_wavepos(stock_model("llama"), {"method": "rope"})
    with pytest.raises(ValueError, match="nothing to revert"):
        revert_wavepos(stock_model("gpt2"))
    dropout = apply_wavepos(GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)))
    with pytest.raises(ValueError, match="attn_pdrop"):
        dropout.train()(tokens(1, 5))


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_trains_saves_loads_and_merges(arch, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model = wavepos_model(arch)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False))
    assert peft_model.peft_config["default"].target_modules == set(hf_wavepos.lora_target_modules(model))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-3)
    ids = tokens(4, 24)
    peft_model.train()
    losses = []
    for _ in range(5):
        loss = peft_model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(ids).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(wavepos_model(arch), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, adapted, rtol=1e-5, atol=1e-5)
        merged = peft_model.merge_and_unload()
        torch.testing.assert_close(merged(ids).logits, adapted, rtol=1e-4, atol=1e-4)
    assert merged.config.model_type == f"wavepos_{arch}"
