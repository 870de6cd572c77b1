"""Padding inside a row is padding, never a document boundary; packed rows stay separate documents.

transformers' rule, followed here: documents are read from ``position_ids`` only when neither a 2-D
padding mask nor a cache is given. ``generate()`` builds ``position_ids`` from the mask (cumsum - 1,
pads at 0), so pads inside a row repeat a position; with the mask given that must change nothing.
"""

import pytest
import torch

import hf_wavepos
from hf_wavepos import WavePosConfig, wavelet_table
from hf_wavepos.attention import reference_attention
from hf_wavepos.models.registry import architecture_of
from hf_wavepos.positions import packed_document_ids
from tests.models.tester import ARCHS, project_qkv, tokens, wavepos_model


def generate_positions(mask: torch.Tensor) -> torch.Tensor:
    """The position_ids ``generate()`` builds from a 2-D mask: cumsum - 1, pads at 0."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def multi_turn_batch():
    """Two rows: turn A (4 tokens), 2 pads where turn A ended early, turn B (7 tokens); and a full row."""
    ids = tokens(2, 13, seed=7)
    mask = torch.ones_like(ids)
    mask[0, 4:6] = 0
    ids[0, 4:6] = 0
    return ids, mask


def test_issue_repro_token_after_a_pad_sees_the_token_before_it():
    model = wavepos_model("llama")
    mask = torch.tensor([[1, 0, 1]])
    positions = torch.tensor([[0, 0, 1]])
    with torch.no_grad():
        first = model(torch.tensor([[5, 0, 7]]), attention_mask=mask, position_ids=positions).logits[0, 2]
        changed = model(torch.tensor([[9, 0, 7]]), attention_mask=mask, position_ids=positions).logits[0, 2]
        alone = model(torch.tensor([[7]])).logits[0, 0]
        without_positions = model(torch.tensor([[5, 0, 7]]), attention_mask=mask).logits[0, 2]
    assert not torch.allclose(first, alone, atol=1e-3)
    assert not torch.allclose(first, changed, atol=1e-3)
    assert torch.equal(first, without_positions)


def _attention_calls(model, *args, **kwargs):
    """(module, hidden input, output) of every wavepos attention module for one forward."""
    captured = []
    modules = [m for m in model.modules() if isinstance(m, hf_wavepos.models.common.WavePosAttentionMixin)]
    hooks = [m.register_forward_hook(lambda mod, a, kw, out: captured.append((mod, a[0] if a else kw["hidden_states"], out)),
                                     with_kwargs=True) for m in modules]
    try:
        with torch.no_grad():
            logits = model(*args, **kwargs).logits
    finally:
        for h in hooks:
            h.remove()
    return logits, captured


@pytest.mark.parametrize("arch", ARCHS)
def test_pads_inside_rows_are_padding_for_attention(arch):
    """A batch of multi-turn rows: every attention layer equals the hand computation (causal +
    padding, no document cut at the pads), and position_ids from the mask change nothing."""
    model = wavepos_model(arch)
    ids, mask = multi_turn_batch()
    logits, calls = _attention_calls(model, ids, attention_mask=mask, position_ids=generate_positions(mask))
    with torch.no_grad():
        assert torch.equal(logits, model(ids, attention_mask=mask).logits)
    head_dim = architecture_of(arch).head_dim(model.config)
    table = wavelet_table(WavePosConfig(), head_dim, ids.shape[1])
    assert len(calls) == model.config.num_hidden_layers
    for module, hidden, out in calls:
        with torch.no_grad():
            q, k, v, out_proj = project_qkv(module, hidden)
            want = reference_attention(q, k, v, table, scaling=module.scaling, key_padding_mask=mask.bool())
            want = out_proj(want.transpose(1, 2).reshape(*hidden.shape[:2], -1))
        real = mask.bool()
        torch.testing.assert_close(out[0][real], want[real], rtol=1e-5, atol=1e-5)
    # Turn A is seen by turn B: changing it changes turn B's logits.
    other = ids.clone()
    other[0, :4] = tokens(1, 4, seed=8)
    with torch.no_grad():
        moved = model(other, attention_mask=mask, position_ids=generate_positions(mask)).logits
    assert (moved[0, 6:] - logits[0, 6:]).abs().max() > 1e-2
    assert torch.equal(moved[1], logits[1])


def greedy_with_mask(model, ids, mask, steps):
    """Greedy decoding without a cache, the mask grown by one real token per step."""
    for _ in range(steps):
        with torch.no_grad():
            logits = model(ids, attention_mask=mask, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return ids


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_with_pads_inside_and_left_padding(arch, cache):
    """generate() (which builds position_ids from the mask) equals cache-free greedy decoding
    with the mask, for rows with pads inside and a left-padded row."""
    model = wavepos_model(arch)
    ids, mask = multi_turn_batch()
    left = torch.cat([torch.zeros(1, 3, dtype=torch.long), tokens(1, 10, seed=9)], 1)
    ids, mask = torch.cat([ids, left]), torch.cat([mask, (left != 0).long()])
    kwargs = {"cache_implementation": "static"} if cache == "static" else {}
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0, **kwargs)
    assert torch.equal(out, greedy_with_mask(model, ids, mask, 5))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("use_cache", [True, False])
def test_packed_rows_without_mask_stay_separate_documents(arch, use_cache):
    """Packed (position_ids restarting, no mask, no cache given): each document as if alone, for
    every row of a batch, with and without the cache the forward creates."""
    model = wavepos_model(arch)
    a, b, c = tokens(1, 5, seed=10), tokens(1, 8, seed=11), tokens(1, 13, seed=12)
    packed = torch.cat([torch.cat([a, b], 1), c])
    positions = torch.stack([torch.cat([torch.arange(5), torch.arange(8)]), torch.arange(13)])
    with torch.no_grad():
        together = model(packed, position_ids=positions, use_cache=use_cache).logits
        torch.testing.assert_close(together[:1, :5], model(a).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(together[:1, 5:], model(b).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(together[1:], model(c).logits, rtol=1e-5, atol=1e-5)


def test_the_document_rule_fires_only_without_mask_and_cache():
    positions = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    assert packed_document_ids(positions, None, None).tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]
    assert packed_document_ids(positions, torch.ones(2, 5), None) is None
    assert packed_document_ids(positions, None, object()) is None
    assert packed_document_ids(None, None, None) is None
    assert packed_document_ids(torch.arange(5)[None], None, None) is None  # one document per row
    # (1, L) positions of a batch are broadcast to every row.
    assert packed_document_ids(positions[:1], None, None, batch_size=3).shape == (3, 5)
