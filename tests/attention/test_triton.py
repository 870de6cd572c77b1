"""What is particular to the Triton kernels: chunk supports, decoding, torch.compile, tile errors.

Their agreement with the float64 reference on every case of the contract (forward and every
gradient) is in test_conformance.py. Without a GPU the kernels run on CPU tensors through Triton's
interpreter, at small odd shapes.
TRITON_INTERPRET=1 must be set before triton is first imported (``import hf_wavepos`` imports it
through torch._dynamo): this module sets it at the top, which suffices when it is imported first;
when another module imported triton earlier in the same pytest run, the kernel tests here are
deselected and `test_kernels_in_a_fresh_interpreter_process` runs them (and the triton cases of
test_conformance.py) in a fresh process.
On a CUDA machine the same cases run compiled on the GPU, plus the cases marked ``gpu``.

The rule is FlashAttention's: the error against the float64 truth is at most twice that of plain
PyTorch (`reference_attention`) in the same precision, for the output and every gradient.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # effective only if triton is not imported yet

pytest.importorskip("triton")

from attention_cases import DEVICE, PAPER, TWO_CHUNKS, assert_within_twice_plain, make_inputs  # noqa: E402
from hf_wavepos import WavePosConfig, wavelet_table  # noqa: E402
from hf_wavepos.attention import reference_attention  # noqa: E402
from hf_wavepos.attention.triton import interpreter_ready, triton_attention, triton_decode_attention  # noqa: E402
from hf_wavepos.attention.triton.support import chunk_supports  # noqa: E402

KERNELS_RUN_HERE = DEVICE == "cuda" or interpreter_ready()
kernel_test = pytest.mark.skipif(
    not KERNELS_RUN_HERE, reason="triton was imported before TRITON_INTERPRET=1: run in a fresh process below"
)


@pytest.mark.skipif(KERNELS_RUN_HERE, reason="the kernel tests run in this process")
def test_kernels_in_a_fresh_interpreter_process():
    """Runs the kernel tests where TRITON_INTERPRET=1 precedes the first import of triton."""
    env = dict(os.environ, TRITON_INTERPRET="1", HF_HUB_OFFLINE="1")
    conformance = str(Path(__file__).with_name("test_conformance.py"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, conformance, "-k", "triton"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match="set after triton was imported"):  # and here, a clear error
        triton_attention(q, q, q, torch.zeros(4, 16))


def kernels(block):
    return lambda *a, **kw: triton_attention(*a, block=block, chunk=16, **kw)


@kernel_test
def test_chunks_in_any_order_and_odd_head_dim():
    """Supports need not grow with the column index (a permuted table); D = 24 is padded to 32."""
    q, k, v = make_inputs(1, 1, 1, 50, 50, 24, seed=3, requires_grad=False)
    table = wavelet_table(WavePosConfig(num_scales=3), 24, 50, dtype=torch.float64).flip(1)
    sup = chunk_supports(table, 16)
    assert sup.by_chunk[0] > sup.by_chunk[1] > 0 and sup.order.tolist() == [1, 0]
    assert_within_twice_plain(q, k, v, table, torch.float32, kernels(16))


@kernel_test
@pytest.mark.parametrize("Lq", [1, 3])
def test_decoding_kernel_over_a_cache(Lq):
    """Split-K decoding (3 slices of the cache), GQA rows spanning heads, padding and ALiBi."""
    B, H, Hkv, Lk, D = 2, 4, 2, 70, 32
    q, k, v = make_inputs(B, H, Hkv, Lq, Lk, D, seed=9, requires_grad=False)
    table = wavelet_table(TWO_CHUNKS, D, Lk, dtype=torch.float64)
    pad = torch.ones(B, Lk, dtype=torch.bool)
    pad[1, :30] = False
    slopes = torch.tensor([0.5, 0.25, 0.125, 0.0625])
    kwargs = dict(q_offset=Lk - Lq, key_padding_mask=pad, alibi_slopes=slopes)
    want = reference_attention(q, k, v, table, **kwargs)
    plain = reference_attention(*(t.float() for t in (q, k, v, table)), **kwargs)
    bound = 2 * (plain.double() - want).abs().max() + 1e-6
    inputs = [t.float().to(DEVICE) for t in (q, k, v, table)]
    dev = {key: val.to(DEVICE) if isinstance(val, torch.Tensor) else val for key, val in kwargs.items()}
    got = triton_decode_attention(*inputs, n_splits=3, block_n=16, **dev)
    assert (got.double().cpu() - want).abs().max() <= bound
    with torch.no_grad():  # without gradients, triton_attention picks the decoding kernel itself
        auto = triton_attention(*inputs, **dev)
    assert (auto.double().cpu() - want).abs().max() <= bound


@kernel_test
def test_torch_compile_traces_the_custom_ops_without_graph_breaks():
    """fullgraph=True: the kernels are opaque custom ops with fake implementations and autograd."""
    q, k, v = (t.float().to(DEVICE).requires_grad_() for t in make_inputs(1, 2, 1, 20, 20, 32, seed=13, requires_grad=False))
    table = wavelet_table(TWO_CHUNKS, 32, 20, device=DEVICE)
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    compiled = torch.compile(lambda *a: triton_attention(*a, block=16), backend=backend, fullgraph=True)
    out = compiled(q, k, v, table)
    eager = triton_attention(q, k, v, table, block=16)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    for g, e in zip(grads, torch.autograd.grad(eager.sum(), (q, k, v))):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_chunk_supports_follow_the_cutoff():
    table = wavelet_table(TWO_CHUNKS, 32, 200)
    sup = chunk_supports(table, 16)
    for c in range(2):
        cols = table[:, 16 * c : 16 * c + 16]
        r = int(sup.by_chunk[c])
        assert cols[r:].abs().max() < 1e-6 <= cols[r - 1].abs().max()
    assert chunk_supports(table, 16) is sup  # cached per live table
    assert chunk_supports(torch.zeros(10, 32), 16).by_chunk.tolist() == [0, 0]  # NoPE / ALiBi tables


@kernel_test
def test_bad_inputs_raise_clear_errors(monkeypatch):
    q, k, v = make_inputs(1, 2, 1, 4, 4, 16, requires_grad=False)
    table = torch.zeros(4, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="float16, bfloat16 and float32"):
        triton_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), table.to(DEVICE))
    q, k, v, table = (t.float().to(DEVICE) for t in (q, k, v, table))
    with pytest.raises(ValueError, match="block must be a power of two"):
        triton_attention(q, k, v, table, block=24)
    with pytest.raises(ValueError, match="decode=True"):
        triton_attention(q.requires_grad_(), k, v, table, decode=True)
    if DEVICE == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(ValueError, match="needs a CUDA device"):
            triton_attention(q, k, v, table)


@kernel_test
@pytest.mark.skipif(DEVICE == "cuda", reason="on a GPU, run bench/attention_gpu.py itself")
def test_gpu_benchmark_script_runs_end_to_end_in_cpu_smoke_mode(tmp_path, monkeypatch):
    """bench/attention_gpu.py at toy sizes on CPU: every section runs, JSON (device named) + PNG."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = importlib.util.spec_from_file_location("attention_gpu", Path(__file__).parents[2] / "bench" / "attention_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--cpu-smoke", "--presets", "long", "--out-dir", str(tmp_path)])
    result = json.loads((tmp_path / "attention_gpu.json").read_text())
    assert "Triton interpreter" in result["device"]
    assert {"sdpa", "sdpa_rope", "triton/long"} <= set(result["attention"]["32"])
    assert result["attention"]["32"]["triton/long"]["seconds"] > 0
    assert {"sdpa", "triton/long"} <= set(result["decode"])
    assert result["training"]["wavepos/long"]["tokens_per_second"] > 0
    assert "training_throughput_vs_rope/long" in result["targets"]
    assert (tmp_path / "attention_gpu.png").stat().st_size > 10_000


# ---------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["oka2025-4k", "long"])
@pytest.mark.parametrize("length", [127, 1000, 2048])
def test_gpu_bfloat16_presets_within_twice_plain_pytorch(preset, length):
    config = WavePosConfig.from_preset(preset)
    q, k, v = make_inputs(2, 4, 2, length, length, 128, seed=10, requires_grad=False)
    table = wavelet_table(config, 128, length, dtype=torch.float64)
    assert_within_twice_plain(q, k, v, table, torch.bfloat16, triton_attention)


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["oka2025-4k", "long"])
def test_gpu_decoding_over_a_long_cache(preset):
    config = WavePosConfig.from_preset(preset)
    q, k, v = make_inputs(1, 8, 2, 1, 5000, 128, seed=11, requires_grad=False)
    table = wavelet_table(config, 128, 5000, dtype=torch.float64)
    want = reference_attention(q, k, v, table, q_offset=4999)
    plain = reference_attention(*(t.bfloat16() for t in (q, k, v, table)), q_offset=4999)
    got = triton_decode_attention(*(t.bfloat16().cuda() for t in (q, k, v, table)), q_offset=4999)
    assert (got.double().cpu() - want).abs().max() <= 2 * (plain.double() - want).abs().max() + 1e-3


@pytest.mark.gpu
def test_gpu_triton_is_the_cuda_default():
    from hf_wavepos.attention import default_backend

    assert default_backend("cuda") == "triton"


@pytest.mark.gpu
def test_gpu_wavepos_llama_trains_the_same_with_triton_as_with_the_reference():
    """A converted Llama (log-n scaling, left padding -> transformers' dense mask) through the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_wavepos import apply_wavepos, use_backend

    config = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = apply_wavepos(LlamaForCausalLM(config), "long").cuda()
    ids = torch.randint(128, (2, 300), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :37] = 0
    results = {}
    for backend in ("reference", "triton"):
        model.zero_grad()
        with use_backend(backend):
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        results[backend] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(results["triton"][0], results["reference"][0], rtol=1e-4, atol=1e-4)
    for ours, ref in zip(results["triton"][1], results["reference"][1]):
        torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-4)
