"""What apply_wavepos keeps lives in the module tree: it moves and casts with the model, stays out
of state_dict / save_pretrained, and revert_wavepos gives a model that works where it now is."""

import copy

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from hf_wavepos import apply_wavepos, revert_wavepos
from hf_wavepos.models.registry import architecture_of
from tests.models.tester import ARCHS, stock_model, tokens, wavepos_model

CASTS = {
    "half": lambda m: m.half(),
    "bfloat16": lambda m: m.to(torch.bfloat16),
    "double": lambda m: m.double(),
    "meta": lambda m: m.to("meta"),
}
if torch.cuda.is_available():
    CASTS["cuda"] = lambda m: m.cuda()


def tensors_outside_the_module_tree(model: torch.nn.Module) -> set[str]:
    """Tensors and modules that modules of ``model`` hold as plain attributes (which ``.to()`` and
    ``state_dict`` never see)."""
    found = set()
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            if key not in ("_parameters", "_buffers", "_modules") and isinstance(value, (torch.Tensor, torch.nn.Module)):
                found.add(f"{name}.{key}")
    return found


def every_tensor(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t for t in (*model.parameters(), *model.buffers()) if t is not None]


@pytest.mark.parametrize("arch", ARCHS)
def test_conversion_keeps_nothing_outside_the_module_tree(arch):
    stock = stock_model(arch)
    model = apply_wavepos(copy.deepcopy(stock))
    assert tensors_outside_the_module_tree(model) == tensors_outside_the_module_tree(stock)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cast", list(CASTS))
def test_cast_or_move_then_revert_equals_the_stock_model_cast_the_same_way(arch, cast):
    stock = stock_model(arch)
    model = apply_wavepos(copy.deepcopy(stock))
    CASTS[cast](model)
    CASTS[cast](stock)
    dtype, device = stock.dtype, stock.device
    assert all(t.dtype == dtype and t.device == device for t in every_tensor(model) if t.is_floating_point())
    revert_wavepos(model)
    assert all(t.dtype == dtype and t.device == device for t in every_tensor(model) if t.is_floating_point())
    ids = tokens(2, 7).to(device)
    # On meta, GPT-2's check for pads in input_ids cannot run (stock and reverted alike): give embeddings.
    inputs = (lambda m: {"inputs_embeds": m.get_input_embeddings()(ids)}) if device.type == "meta" else (lambda m: {"input_ids": ids})
    with torch.no_grad():
        got, want = model(**inputs(model)).logits, stock(**inputs(stock)).logits
    assert got.dtype == want.dtype and got.device == want.device and got.shape == want.shape
    if device.type != "meta":
        assert torch.equal(got, want)
    assert model.state_dict().keys() == stock.state_dict().keys()


@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_and_save_pretrained_hold_exactly_the_checkpoint(arch, tmp_path):
    """The converted model's checkpoint is the stock one less its learned position table (GPT-2's
    wpe), also after a cast; saved files hold nothing else and load back exactly."""
    stock = stock_model(arch).half()
    model = apply_wavepos(copy.deepcopy(stock))
    state, stock_state = model.state_dict(), stock.state_dict()
    dropped = 1 if architecture_of(arch).learned_positions_field else 0
    assert set(state) <= set(stock_state) and len(stock_state) - len(state) == dropped
    assert all(torch.equal(tensor, stock_state[name]) for name, tensor in state.items())
    saved = {}
    for name, m in (("stock", stock), ("wavepos", model)):
        m.save_pretrained(tmp_path / name)
        (weights,) = (tmp_path / name).glob("*.safetensors")
        with safe_open(weights, "pt") as f:
            saved[name] = {key: f.get_tensor(key) for key in f.keys()}
    assert set(saved["wavepos"]) == set(saved["stock"]) - (set(stock_state) - set(state))
    assert all(torch.equal(tensor, saved["stock"][name]) for name, tensor in saved["wavepos"].items())
    tmp_path = tmp_path / "wavepos"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float16).eval()
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(tensor, state[name]) for name, tensor in loaded.state_dict().items())
    # A folder with the module's own key names (as saved before the stock names were used) loads too.
    older = tmp_path.parent / "module_names"
    model.config.save_pretrained(older)
    unique = {}
    for name, tensor in state.items():  # tied weights once
        if all(tensor.data_ptr() != kept.data_ptr() for kept in unique.values()):
            unique[name] = tensor
    save_file(unique, older / "model.safetensors", metadata={"format": "pt"})
    again = AutoModelForCausalLM.from_pretrained(older, dtype=torch.float16)
    assert all(torch.equal(tensor, state[name]) for name, tensor in again.state_dict().items())
    # A model built as wavepos (no stock table to restore) reverts to a working stock model.
    revert_wavepos(loaded)
    with torch.no_grad():
        logits = loaded(tokens(1, 5)).logits
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_resize_token_embeddings_and_tie_weights_after_conversion_and_after_revert(arch):
    stock = stock_model(arch)
    model = apply_wavepos(copy.deepcopy(stock))
    for m in (stock, model):
        torch.manual_seed(3)
        m.resize_token_embeddings(100)
        m.tie_weights()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        assert torch.equal(getattr(model, get)().weight, getattr(stock, get)().weight)
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert tied == (stock.get_input_embeddings().weight is stock.get_output_embeddings().weight)
    assert model.config.vocab_size == 100
    ids = torch.tensor([[99, 3, 98, 5]])
    with torch.no_grad():
        assert model(ids).logits.shape == (1, 4, 100)
        revert_wavepos(model)
        assert torch.equal(model(ids).logits, stock(ids).logits)
    for m in (stock, model):
        torch.manual_seed(4)
        m.resize_token_embeddings(104)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, stock(ids).logits)
    assert (model.get_input_embeddings().weight is model.get_output_embeddings().weight) == tied
