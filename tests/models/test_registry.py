"""The architecture registry: every entry is complete, registries refuse silent overwrites, and a
fourth Llama-like architecture needs one model file plus one entry."""

from __future__ import annotations

import pytest
import torch

from hf_wavepos.attention import register_backend, reference_attention
from hf_wavepos.models import registry
from hf_wavepos.models.registry import Architecture, architecture_of, register_architecture, registered_architectures
from hf_wavepos.models.remote import bundle_source
from hf_wavepos.wavelets import get_wavelet, register_wavelet
from tests.models import example_qwen2
from tests.models import test_models as model_tests
from tests.models.tester import ARCHS, VOCAB, project_qkv, stock_model, tokens, wavepos_model

OPTIONAL_FIELDS = {"learned_positions_field", "on_apply", "on_revert"}


def check_entry(arch: Architecture) -> None:
    """Every field of ``arch`` is set and says something true about the architecture."""
    for name in Architecture.__dataclass_fields__:
        value = getattr(arch, name)
        assert name in OPTIONAL_FIELDS or value not in (None, "", (), {}), f"{arch.stock_model_type}: {name} is empty"
    assert architecture_of(arch.model_type) is arch and architecture_of(arch.stock_model_type) is arch
    assert arch.stock_config_class.model_type == arch.stock_model_type and arch.name
    for stock, new in arch.class_map.items():
        assert issubclass(new, stock)
    assert {arch.base_class, arch.causal_lm_class} <= set(arch.class_map.values())
    assert issubclass(arch.config_class, arch.stock_config_class)
    # The tiny config builds a 2-layer model whose attention heads have head_dim(config) dimensions.
    model = stock_model(arch)
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == VOCAB
    converted = wavepos_model(arch)
    attention = [m for m in converted.modules() if hasattr(m, "project_qkv")]
    q, k, v, _ = project_qkv(attention[0], torch.zeros(1, 3, model.config.hidden_size))
    assert q.shape[-1] == k.shape[-1] == v.shape[-1] == arch.head_dim(model.config)
    # Every LoRA name is a module of the model; the other config fields exist.
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for field in ("lora_target_modules", "lora_embeddings", "lora_norms", "query_key_modules"):
        assert set(getattr(arch, field)) <= names, (arch.stock_model_type, field, names)
    assert hasattr(model.config, arch.attention_dropout_field)
    assert arch.learned_positions_field is None or hasattr(model.config, arch.learned_positions_field)
    scratch = arch.scratch_config(vocab_size=50, hidden_size=64, layers=3, heads=4, max_positions=32, eos_token_id=1)
    assert isinstance(scratch, arch.stock_config_class)
    assert (scratch.vocab_size, scratch.hidden_size, scratch.num_hidden_layers, scratch.num_attention_heads) == (50, 64, 3, 4)
    assert arch.head_dim(scratch) == 16 and float(getattr(scratch, arch.attention_dropout_field)) == 0.0
    remote = bundle_source(arch.source_file, arch.model_type)  # compiles, no clashing names
    assert "import hf_wavepos" not in remote and "from hf_wavepos" not in remote


@pytest.mark.parametrize("arch", ARCHS)
def test_every_entry_has_every_field(arch):
    check_entry(architecture_of(arch))


def test_registries_refuse_silent_overwrites():
    llama = architecture_of("llama")
    with pytest.raises(ValueError, match="architecture 'llama' is already registered; pass overwrite=True"):
        register_architecture(llama)
    register_architecture(llama, overwrite=True)  # asked for: allowed (and the same entry again)
    assert architecture_of("wavepos_llama") is llama and registered_architectures().count(llama) == 1
    with pytest.raises(ValueError, match="attention backend 'reference' is already registered"):
        register_backend("reference", reference_attention, supports=lambda device: True)
    ricker = get_wavelet("ricker")
    with pytest.raises(ValueError, match="wavelet 'ricker' is already registered"):
        register_wavelet("ricker", lambda t, c: t, radius=None)
    assert get_wavelet("ricker") is ricker


def _qwen2_scratch(*, vocab_size, hidden_size, layers, heads, max_positions, **special):
    return example_qwen2.Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions, **special,
    )


QWEN2 = Architecture(
    stock_model_type="qwen2", name="Qwen2", module=example_qwen2, config_class=example_qwen2.WavePosQwen2Config,
    base_class=example_qwen2.WavePosQwen2Model, causal_lm_class=example_qwen2.WavePosQwen2ForCausalLM,
    stock_config_class=example_qwen2.Qwen2Config, head_dim=example_qwen2.qwen2_head_dim,
    attention_dropout_field="attention_dropout", scratch_config=_qwen2_scratch,
    tiny_config=dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=96, pad_token_id=0),
    lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), lora_embeddings=("embed_tokens",),
    lora_norms=("input_layernorm", "post_attention_layernorm", "norm"), query_key_modules=("q_proj", "k_proj"),
)


@pytest.fixture()
def qwen2_registered():
    before = dict(registry.ARCHITECTURES)
    register_architecture(QWEN2)
    yield QWEN2
    registry.ARCHITECTURES.clear()
    registry.ARCHITECTURES.update(before)


def test_a_fourth_llama_like_architecture_is_one_file_and_one_entry(qwen2_registered, tmp_path):
    check_entry(qwen2_registered)
    # The model tests of the shipped architectures pass for it unchanged.
    model_tests.test_attention_equals_hand_computation_with_reference("qwen2")
    model_tests.test_apply_then_revert_is_bit_identical("qwen2")
    model_tests.test_apply_and_revert_after_from_pretrained("qwen2", tmp_path / "pretrained")
    model_tests.test_packed_documents_equal_separate_runs("qwen2")
    model_tests.test_generate_with_cache_equals_no_cache_argmax("qwen2", "dynamic")
    model_tests.test_save_load_round_trip_and_auto_classes("qwen2", tmp_path / "round_trip")
    assert (tmp_path / "round_trip" / "modeling_wavepos_qwen2.py").is_file()
    with torch.no_grad():
        assert torch.isfinite(wavepos_model("qwen2")(tokens(1, 5)).logits).all()
