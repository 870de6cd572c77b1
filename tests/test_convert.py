"""`wavepos convert`: stock checkpoints (llama, gpt_neox, gpt2) and a tiny GGUF file written here
with the `gguf` package become wavepos checkpoints that load with the plugin and without it
(trust_remote_code, in a subprocess where hf_wavepos cannot be imported) with the same logits."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPTNeoXConfig, LlamaConfig

from hf_wavepos import apply_wavepos
from hf_wavepos.cli import main
from hf_wavepos.convert import CONVERSION_FILE, convert_checkpoint, position_target, resolve_source

ROOT = Path(__file__).resolve().parent.parent
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = (("d", "e"), ("de", "f"), ("Ġ", "x"), ("r", "e"), ("re", "t"))


def byte_level_vocab() -> list[str]:
    """Special tokens, the 256 byte-level symbols (GPT-2's alphabet), then one token per merge."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = [bytes_to_unicode()[b] for b in range(256)]
    return [*SPECIALS, *symbols, *("".join(pair) for pair in MERGES)]


def tiny_stock_model(arch: str, vocab_size: int = 300) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                             rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                             pad_token_id=2)
    elif arch == "gpt_neox":
        config = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    else:
        config = GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                            eos_token_id=2)
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_tokenizer():
    """A byte-level BPE tokenizer over `byte_level_vocab` (the kind SmolLM2 uses)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(byte_level_vocab())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(MERGES)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=SPECIALS[1], eos_token=SPECIALS[2],
                                   unk_token=SPECIALS[0], pad_token=SPECIALS[2])


def save_stock(arch: str, folder: Path) -> torch.nn.Module:
    model = tiny_stock_model(arch)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return model


def _llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    # llama.cpp stores q/k rows interleaved per rotary pair; transformers' GGUF loader undoes this.
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(model: torch.nn.Module, path: Path) -> Path:
    """Write a tiny Llama (float32 tensors, byte-level BPE vocabulary) as llama.cpp lays it out."""
    gguf = pytest.importorskip("gguf")
    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_vocab_size(c.vocab_size)
    vocab = byte_level_vocab()
    vocab += [f"<|extra_{i}|>" for i in range(c.vocab_size - len(vocab))]  # pad to the model's vocabulary
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab)
    writer.add_token_types([3 if t in SPECIALS or t.startswith("<|extra") else 1 for t in vocab])
    writer.add_token_merges([" ".join(pair) for pair in MERGES])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied: llama.cpp stores only token_embd
        array = tensor.numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            array = _llama_cpp_permute(array, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            array = _llama_cpp_permute(array, c.num_key_value_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


REMOTE_SCRIPT = textwrap.dedent('''
    import sys
    sys.modules["hf_wavepos"] = None  # the plugin is not importable here
    import torch
    from transformers import AutoModelForCausalLM
    folder, ids_path, out_path = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(torch.load(ids_path)).logits
    torch.save({"logits": logits, "module": type(model).__module__}, out_path)
''')


def logits_without_plugin(folder: Path, ids: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    torch.save(ids, tmp_path / "ids.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")],
                   check=True, env=env, cwd=tmp_path, capture_output=True)
    result = torch.load(tmp_path / "out.pt")
    assert result["module"].startswith("transformers_modules")
    return result["logits"]


def check_converted(folder: Path, reference: torch.nn.Module, tmp_path: Path) -> None:
    """The folder loads with the plugin and without it, both giving ``reference``'s logits."""
    ids = torch.randint(3, 250, (2, 19), generator=torch.Generator().manual_seed(1))
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert loaded.config.model_type.startswith("wavepos_")
    with torch.no_grad():
        expected = reference(ids).logits
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(logits_without_plugin(folder, ids, tmp_path), expected, rtol=0, atol=0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.decode(tokenizer("def x ret").input_ids) == "def x ret"


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt2"])
def test_cli_converts_stock_checkpoints(arch, tmp_path, capsys):
    stock = save_stock(arch, tmp_path / "stock")
    out = tmp_path / "converted"
    assert main(["convert", str(tmp_path / "stock"), str(out), "--position", "long", "--train-length", "32"]) == 0
    printed = capsys.readouterr().out
    assert f"{arch} -> wavepos_{arch}" in printed and "log-n scaling past 32" in printed
    removed = "wpe" if arch == "gpt2" else "RoPE rotation"
    assert removed in printed
    params = sum(p.numel() for p in stock.parameters())
    kept = params - (stock.transformer.wpe.weight.numel() if arch == "gpt2" else 0)
    assert f"{kept:,} kept of {params:,}" in printed
    report = json.loads((out / CONVERSION_FILE).read_text())
    assert report["wavepos"]["train_length"] == 32 and report["parameters_after"] == kept
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == f"wavepos_{arch}" and saved["wavepos"]["num_scales"] == 16
    assert (out / f"modeling_wavepos_{arch}.py").is_file() and list(out.glob("*.safetensors"))
    check_converted(out, apply_wavepos(copy.deepcopy(stock), position_target("long", 32)), tmp_path)


def test_cli_converts_a_gguf_file(tmp_path, capsys):
    pytest.importorskip("gguf")
    stock = tiny_stock_model("llama")
    gguf_path = write_tiny_gguf(stock, tmp_path / "tiny.gguf")
    # The GGUF file loads in transformers as the very model it was written from (tensors in float32).
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf").eval()
    ids = torch.randint(3, 250, (1, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, stock(ids).logits, rtol=0, atol=0)

    out = tmp_path / "converted"
    assert main(["convert", str(gguf_path), str(out), "--position", '{"preset": "oka2025", "num_scales": 4}']) == 0
    printed = capsys.readouterr().out
    assert "(tiny.gguf)" in printed and "llama -> wavepos_llama" in printed and "4 scales" in printed
    assert not list(out.glob("*.gguf"))
    check_converted(out, apply_wavepos(copy.deepcopy(stock), {"num_scales": 4}), tmp_path)

    # A folder holding one GGUF file works as SRC too; position "rope" re-saves the stock model.
    stock_out = tmp_path / "stock"
    assert main(["convert", str(tmp_path), str(stock_out), "--position", "rope"]) == 0
    assert "positions unchanged" in capsys.readouterr().out
    resaved = AutoModelForCausalLM.from_pretrained(stock_out).eval()
    assert resaved.config.model_type == "llama" and "quantization_config" not in resaved.config.to_dict()
    with torch.no_grad():
        torch.testing.assert_close(resaved(ids).logits, stock(ids).logits, rtol=0, atol=0)


def test_gguf_without_the_gguf_package_names_the_install(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "m.gguf"), str(tmp_path / "out"), "--position", "long"])
    err = capsys.readouterr().err
    assert "gguf package" in err and "pip install" in err and not (tmp_path / "out").exists()


def test_unsupported_architecture_is_refused_before_loading(tmp_path, capsys):
    from transformers import MistralConfig

    MistralConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2).save_pretrained(tmp_path / "mistral")  # a config and no weights at all
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "mistral"), str(tmp_path / "out"), "--position", "long"])
    err = capsys.readouterr().err
    assert "'mistral' cannot be converted" in err and "gpt2, gpt_neox, llama" in err


def test_bad_inputs_are_clear_errors(tmp_path):
    save_stock("llama", tmp_path / "stock")  # head_dim 16
    with pytest.raises(ValueError, match="num_scales=3 does not divide head_dim=16"):
        convert_checkpoint(tmp_path / "stock", tmp_path / "out", {"num_scales": 3})
    with pytest.raises(ValueError, match="unknown wavepos preset"):
        convert_checkpoint(tmp_path / "stock", tmp_path / "out", "longer")
    with pytest.raises(ValueError, match="train_length only applies"):
        position_target("rope", 256)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        convert_checkpoint(tmp_path / "stock", tmp_path / "full", "nope")
    (tmp_path / "stock" / "a.gguf").write_bytes(b"")
    assert resolve_source(tmp_path / "stock") == (str(tmp_path / "stock"), None)  # config.json wins
    (tmp_path / "ggufs").mkdir()
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / "ggufs" / name).write_bytes(b"")
    with pytest.raises(ValueError, match="several GGUF files"):
        resolve_source(tmp_path / "ggufs")
    assert resolve_source(tmp_path / "ggufs", "b.gguf") == (str(tmp_path / "ggufs"), "b.gguf")
    convert_checkpoint(tmp_path / "stock", tmp_path / "once", "nope")
    with pytest.raises(ValueError, match="already a wavepos_llama"):
        convert_checkpoint(tmp_path / "once", tmp_path / "twice", "long")


def test_missing_source_is_a_clear_error_without_hub_retries(tmp_path, monkeypatch, capsys):
    """A local-looking SRC that does not exist is reported at once; an unloadable Hub id names SRC and the reason."""
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)
    (tmp_path / "scratch").mkdir()
    for src in ("scratch/nope_dir", "./nope", "../nope", str(tmp_path / "nope"), "a/b/c"):
        with pytest.raises(FileNotFoundError, match=f"SRC '{src}' is neither a local folder.*does not exist"):
            convert_checkpoint(src, tmp_path / "out", "long")
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "scratch/nope_dir", str(tmp_path / "out"), "--position", "long"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and "scratch/nope_dir" in err
    (tmp_path / "scratch" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="is a file but not a .gguf file"):
        convert_checkpoint("scratch/model.safetensors", tmp_path / "out", "long")
    # a Hub id that cannot be loaded (offline here): one ValueError naming SRC and the reason
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"SRC 'nobody/no-such-model' is neither a local folder, nor a \.gguf file, "
                                         r"nor a Hub id that could be loaded: \w+"):
        convert_checkpoint("nobody/no-such-model", tmp_path / "out", "long")
    assert not (tmp_path / "out").exists()
