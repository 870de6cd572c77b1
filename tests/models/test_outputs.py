"""The stock models' output flags on wavepos models: same structure as the stock model, values
checked against a hand computation.

``output_attentions=True`` returns the attention probabilities (B, H, Lq, Lk) per layer with
``attn_implementation="eager"`` (the reference backend), in forward and in ``generate``; other
backends cannot and raise an error naming ``attn_implementation="eager"`` before computing.
"""

import math

import pytest
import torch

from hf_wavepos import WavePosConfig, wavelet_table
from hf_wavepos.models.registry import architecture_of
from tests.models.tester import ARCHS, project_qkv, stock_model, tokens, wavepos_model


def _layer_class(model):
    """The decoder layer class transformers records hidden states from (per architecture)."""
    spec = type(model.base_model)._can_record_outputs["hidden_states"]
    return getattr(spec, "target_class", spec)


def _cache_of(output):
    return getattr(output, "cache", getattr(output, "past_key_values", None))


def hand_attention_probabilities(module, hidden, mask, table):
    """softmax((q.k + q.p[m-n]) * scaling) over visible keys (causal + padding), float64, (B, H, L, L)."""
    q, k, v, _ = project_qkv(module, hidden)
    q, k = q.double(), k.double()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    L = q.shape[2]
    m = torch.arange(L)
    distance = (m[:, None] - m[None, :]).clamp(min=0)
    p = table.double()[distance]  # (L, L, D): p[m - n]
    logits = (q @ k.transpose(-1, -2) + torch.einsum("bhmd,mnd->bhmn", q, p)) * module.scaling
    visible = (m[None, :] <= m[:, None])[None, None] & mask.bool()[:, None, None, :]
    logits = logits.masked_fill(~visible, -math.inf)
    return torch.softmax(logits, -1).nan_to_num(0.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_output_attentions_eager_equals_hand_computation_and_stock_shapes(arch):
    stock, model = stock_model(arch), wavepos_model(arch)
    stock.set_attn_implementation("eager")
    model.set_attn_implementation("eager")
    ids = tokens(2, 11)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    captured = []
    attention_class = type(next(m for m in model.modules() if hasattr(m, "project_qkv")))
    hooks = [m.register_forward_pre_hook(lambda mod, a, kw: captured.append((mod, a[0] if a else kw["hidden_states"])),
                                         with_kwargs=True)
             for m in model.modules() if isinstance(m, attention_class)]
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_attentions=True)
        want = stock(ids, attention_mask=mask, output_attentions=True)
    for h in hooks:
        h.remove()
    layers = model.config.num_hidden_layers
    assert isinstance(out.attentions, tuple) and len(out.attentions) == len(want.attentions) == layers
    table = wavelet_table(WavePosConfig(), architecture_of(arch).head_dim(model.config), ids.shape[1])
    real_rows = mask.bool()[:, None, :, None]  # queries that see at least one key
    for probs, stock_probs, (module, hidden) in zip(out.attentions, want.attentions, captured):
        assert probs.shape == stock_probs.shape == (2, model.config.num_attention_heads, 11, 11)
        assert probs.dtype == stock_probs.dtype
        with torch.no_grad():
            expected = hand_attention_probabilities(module, hidden, mask, table)
        torch.testing.assert_close(probs.double() * real_rows, expected * real_rows, rtol=1e-5, atol=1e-6)
        # The same keys are visible as in the stock model (causal + padding), row by row.
        assert torch.equal((probs > 0) & real_rows, (stock_probs > 0) & real_rows)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_output_attentions_in_generate(arch, cache):
    """Step t's probabilities equal the last row of a cache-free forward over the same tokens."""
    stock, model = stock_model(arch), wavepos_model(arch)
    for m in (stock, model):
        m.set_attn_implementation("eager")
    ids = tokens(1, 7)
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, output_attentions=True,
                  return_dict_in_generate=True)
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    out = model.generate(ids, **kwargs)
    want = stock.generate(ids, **kwargs)
    assert len(out.attentions) == len(want.attentions) == 3
    for step, (layers, stock_layers) in enumerate(zip(out.attentions, want.attentions)):
        assert [a.shape for a in layers] == [a.shape for a in stock_layers]
        length = 7 + step
        with torch.no_grad():
            full = model(out.sequences[:, :length], use_cache=False, output_attentions=True).attentions
        for probs, reference in zip(layers, full):
            rows = slice(None) if step == 0 else slice(-1, None)
            torch.testing.assert_close(probs[:, :, :, :length], reference[:, :, rows], rtol=1e-5, atol=1e-6)
            assert not probs[:, :, :, length:].any()  # unused static-cache slots


@pytest.mark.parametrize("arch", ARCHS)
def test_output_attentions_with_other_backends_raises_before_computing(arch):
    model = wavepos_model(arch)  # sdpa: the device's default backend
    ids = tokens(1, 6)
    calls = []
    model.get_input_embeddings().register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match='output_attentions=True needs attn_implementation="eager"'):
        model(ids, output_attentions=True)
    with pytest.raises(ValueError, match='attn_implementation="eager"'):
        model.generate(ids, max_new_tokens=2, output_attentions=True, return_dict_in_generate=True, pad_token_id=0)
    assert calls == []
    model.set_attn_implementation("wavepos_reference")  # the reference backend by name works too
    with torch.no_grad():
        assert len(model(ids, output_attentions=True).attentions) == model.config.num_hidden_layers
    model.set_attn_implementation("eager")
    model.config.output_attentions = True  # the config's flag, as transformers reads it
    with torch.no_grad():
        assert len(model(ids).attentions) == model.config.num_hidden_layers


@pytest.mark.parametrize("arch", ARCHS)
def test_other_output_flags_match_the_stock_model(arch):
    """output_hidden_states, return_dict=False, use_cache=False, labels with -100, logits_to_keep:
    the structure of the stock model's outputs, values from a hand computation."""
    stock, model = stock_model(arch), wavepos_model(arch)
    ids = tokens(2, 9)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, -2:] = -100
    structure = {}
    for name, m in (("stock", stock), ("wavepos", model)):
        layer_outputs, layer_inputs = [], []
        hooks = [mod.register_forward_hook(lambda mod, a, o: layer_outputs.append(o[0] if isinstance(o, tuple) else o))
                 for mod in m.modules() if isinstance(mod, _layer_class(m))]
        hooks.append(next(mod for mod in m.modules() if isinstance(mod, _layer_class(m))).register_forward_pre_hook(
            lambda mod, a, kw: layer_inputs.append(a[0] if a else kw["hidden_states"]), with_kwargs=True))
        with torch.no_grad():
            full = m(ids, output_hidden_states=True)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            hidden = full.hidden_states
            assert len(hidden) == m.config.num_hidden_layers + 1
            assert torch.equal(hidden[0], layer_inputs[0])
            for i in range(1, m.config.num_hidden_layers):
                assert torch.equal(hidden[i], layer_outputs[i - 1])
            assert torch.equal(hidden[-1], m.base_model(ids).last_hidden_state)
            assert torch.equal(full.logits, m.get_output_embeddings()(hidden[-1]))
            # labels with ignored positions: the mean cross entropy of the shifted, kept labels.
            loss = m(ids, labels=labels).loss
            shift_logits, shift_labels = full.logits[:, :-1].float(), labels[:, 1:]
            kept = shift_labels != -100
            expected = torch.nn.functional.cross_entropy(shift_logits[kept], shift_labels[kept])
            torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
            as_tuple = m(ids, labels=labels, return_dict=False)
            assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], loss) and torch.equal(as_tuple[1], full.logits)
            uncached = m(ids, use_cache=False)
            assert _cache_of(uncached) is None and _cache_of(full) is not None
            assert torch.equal(uncached.logits, full.logits)
            kept_logits = m(ids, logits_to_keep=3).logits
            torch.testing.assert_close(kept_logits, full.logits[:, -3:], rtol=1e-6, atol=1e-6)  # (B, 3, V)
            assert torch.equal(m(ids, logits_to_keep=0).logits, full.logits)
        structure[name] = (
            [h.shape for h in hidden], len(as_tuple), [type(t) for t in as_tuple], kept_logits.shape, loss.shape,
        )
    assert structure["wavepos"] == structure["stock"]
