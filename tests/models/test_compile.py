"""torch.compile of static-cache decoding compiles once, with no graph break, token-exact.

transformers compiles the decoding steps of ``generate(..., cache_implementation="static")``
(by default on CUDA; here forced on CPU with ``CompileConfig._compile_all_devices``). A counting
backend records every graph dynamo hands over; the stock models need one graph and no break.
"""

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig

from tests.models.tester import ARCHS, stock_model, tokens, wavepos_model

NEW_TOKENS = 12


def compiled_generate(model, ids, fullgraph, **kwargs):
    """generate() with compiled static-cache decoding: (tokens, graphs compiled, graph breaks)."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    config = CompileConfig(backend=counting_backend, fullgraph=fullgraph, mode=None)
    config._compile_all_devices = True  # transformers compiles on CUDA only unless told so
    torch._dynamo.reset()
    counters.clear()
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                         cache_implementation="static", compile_config=config, **kwargs)
    return out, len(graphs), sum(counters["graph_break"].values())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_static_cache_decoding_compiles_once_like_the_stock_model(arch):
    """One graph, no break, as the stock model (compiled here for Llama; 1 graph, 0 breaks for
    each stock architecture), and the tokens of the uncompiled model."""
    ids = tokens(1, 7)
    if arch == "llama":
        _, stock_graphs, stock_breaks = compiled_generate(stock_model(arch), ids, fullgraph=True)
        assert (stock_graphs, stock_breaks) == (1, 0)
    model = wavepos_model(arch)
    expected = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                              cache_implementation="static")
    out, graphs, breaks = compiled_generate(model, ids, fullgraph=True)
    assert (graphs, breaks) == (1, 0)
    assert torch.equal(out, expected)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["alibi_left_padded", "eager"])
def test_compiled_decoding_with_padding_other_methods_and_backends(case):
    """A left-padded batch with ALiBi; the eager reference backend: still one graph, token-exact."""
    ids, kwargs = tokens(2, 7), {}
    model = wavepos_model("llama", preset="alibi" if case == "alibi_left_padded" else "oka2025")
    if case == "alibi_left_padded":
        ids[1, :3] = 0
        kwargs["attention_mask"] = (ids != 0).long()
    else:
        model.set_attn_implementation("eager")
    expected = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                              cache_implementation="static", **kwargs)
    out, graphs, breaks = compiled_generate(model, ids, fullgraph=True, **kwargs)
    assert (graphs, breaks) == (1, 0)
    assert torch.equal(out, expected)


def test_compiled_forward_with_static_cache_prefill_then_decode():
    """The whole forward compiled (fullgraph): a prefill and every decoding step over a static
    cache reuse two graphs (one per query length), and equal the uncompiled model."""
    from transformers import StaticCache

    model = wavepos_model("gpt_neox")
    ids = tokens(1, 6)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def run(forward):
        cache = StaticCache(config=model.config, max_cache_len=16)
        logits = [forward(ids, cache=cache, use_cache=True).logits[:, -1]]
        token = logits[-1].argmax(-1, keepdim=True)
        for step in range(5):
            position = torch.tensor([[6 + step]])
            logits.append(forward(token, cache=cache, use_cache=True, position_ids=position).logits[:, -1])
            token = logits[-1].argmax(-1, keepdim=True)
        return torch.stack(logits)

    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        want = run(model)
        got = run(torch.compile(model, backend=counting_backend, fullgraph=True))
    assert len(graphs) == 2 and sum(counters["graph_break"].values()) == 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
