"""What only a GPU compile shows, checked without a GPU; and the launch arguments the kernels refuse.

`test_every_kernel_compiles_for_sm80_and_sm90_within_the_limits` compiles every launch the
package makes (forward, backward delta / dq / dk-dv, decoding split / combine) for sm_80 and
sm_90 at the default configurations, for every dtype and head dim with a table row, with every
mask, ALiBi, grouped-query attention and int64 strides, and plain (`compile_check.all_cases`).
It fails on a compile error, on spills over 256 B per thread and on shared memory over 90% of
the target's limit, and prints the register / spill / shared-memory table (``pytest -s``; the
same table is committed as bench/results/triton_compile.json by ``python bench/triton_compile.py``).
About 170 s of CPU time, spread over a process per CPU.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # effective only if triton is not imported yet

pytest.importorskip("triton")

from hf_wavepos import WavePosConfig, wavelet_table  # noqa: E402
from hf_wavepos.attention import reference_attention  # noqa: E402
from hf_wavepos.attention.triton import (  # noqa: E402
    compile_check,
    interpreter_ready,
    triton_attention,
    triton_decode_attention,
)
from hf_wavepos.attention.triton.configs import TABLE, check_launch_args  # noqa: E402
from hf_wavepos.attention.triton.launch import Launch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(DEVICE == "cpu" and not interpreter_ready(),
                                   reason="needs TRITON_INTERPRET=1 before triton's first import")
KERNELS = {"_fwd_kernel", "_delta_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel", "_decode_split_kernel",
           "_decode_combine_kernel"}


def _ptxas_available() -> bool:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return os.path.exists(get_ptxas(90).path) and os.path.exists(get_ptxas(80).path)
    except Exception:  # noqa: BLE001 - any failure to locate it means: not available
        return False


@pytest.mark.skipif(not _ptxas_available(), reason="this triton install ships no ptxas (the PyPI wheel does)")
def test_every_kernel_compiles_for_sm80_and_sm90_within_the_limits():
    result = compile_check.run()
    rows = result["rows"]
    print("\n" + compile_check.format_table(rows))
    print(f"{len(rows)} compiles in {result['seconds']} s with {result['workers']} processes")
    assert not compile_check.problems(rows), "\n".join(compile_check.problems(rows))
    compiled = {(r["target"], r["dtype"], r["head_dim"], r["variant"], r["kernel"]) for r in rows}
    for case in compile_check.all_cases():  # nothing silently missing
        assert {(case.target, case.dtype, case.head_dim, case.variant, k) for k in KERNELS} <= compiled
    assert {(c.target, c.head_dim) for c in compile_check.all_cases()} == {(t, d) for t, _, d in TABLE}
    full = [r for r in rows if r["variant"] == "full"]
    assert len(full) == len(rows) - len([r for r in rows if r["variant"] == "plain"]) > 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(block=24), "block must be a power of two in \\[16, 128\\]"),
    (dict(block=8), "block must be"),
    (dict(block=256), "block must be"),
    (dict(block=True), "block must be"),
    (dict(block_n=8), "block_n must be a power of two in \\[16, 256\\] \\(tl.dot needs >= 16 keys"),
    (dict(block_n=48), "block_n must be"),
    (dict(chunk=64), "chunk must be a power of two in \\[16, 32\\]"),
    (dict(n_splits=0), "n_splits must be an int in \\[1, 65535\\]"),
    (dict(n_splits=2.0), "n_splits must be"),
])
def test_tile_arguments_are_checked_with_errors_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_launch_args(32, **kwargs)


@needs_kernels
def test_entry_points_check_tile_arguments_before_any_work():
    q = torch.zeros(1, 2, 4, 32, device=DEVICE)
    table = torch.zeros(4, 32, device=DEVICE)
    with pytest.raises(ValueError, match="block must be"):
        triton_attention(q, q, q, table, block=12)
    with pytest.raises(ValueError, match="block_n must be"):
        triton_decode_attention(q[:, :, :1], q, q, table, q_offset=3, block_n=12)
    with pytest.raises(ValueError, match="n_splits must be"):
        triton_decode_attention(q[:, :, :1], q, q, table, q_offset=3, n_splits=-1)
    with pytest.raises(ValueError, match="does not serve torch.float32 with head_dim 256"):
        triton_attention(*(torch.zeros(1, 1, 4, 256, device=DEVICE),) * 3, torch.zeros(4, 256, device=DEVICE))
    with pytest.raises(ValueError, match="does not serve head_dim 300"):
        triton_attention(*(torch.zeros(1, 1, 4, 300, device=DEVICE, dtype=torch.float16),) * 3,
                         torch.zeros(4, 300, device=DEVICE, dtype=torch.float16))


def test_grids_stay_within_cuda_limits():
    """Axis 0 takes up to 2^31 - 1 programs, axes 1 and 2 only 65535: the prefill kernels put every
    (query block, batch, head) on axis 0; a launch over the limits is refused with the fix."""
    case = compile_check.Case("float16", 64, "plain", "sm90")
    for launch in compile_check.case_launches(case):
        assert all(size <= 65535 for size in launch.grid[1:])
    big = compile_check.case_launches(compile_check.Case("float16", 128, "full", "sm90"))
    assert big[0].grid[0] > 65535  # 2^21 tokens x 16 heads: legal on axis 0 only
    with pytest.raises(ValueError, match="grid axis 1 needs 70000 programs, over CUDA's limit of 65535"):
        Launch(big[0].kernel, (1, 70000), ())


@needs_kernels
def test_decode_combine_merges_more_slices_than_its_tile():
    """42 cache slices of 16 keys (the combine kernel merges 16 at a time: 3 steps) give the reference."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 32, generator=gen, dtype=torch.float64) for n in (1, 660, 660))
    table = wavelet_table(WavePosConfig(num_scales=4), 32, 660, dtype=torch.float64)
    want = reference_attention(q, k, v, table, q_offset=659)
    plain = reference_attention(q.float(), k.float(), v.float(), table.float(), q_offset=659)
    inputs = (t.float().to(DEVICE) for t in (q, k, v, table))
    got = triton_decode_attention(*inputs, q_offset=659, n_splits=42, block_n=16)
    assert (got.double().cpu() - want).abs().max() <= 2 * (plain.double() - want).abs().max() + 1e-6


@needs_kernels
def test_torch_compile_traces_the_decoding_custom_op_without_graph_breaks():
    """Decoding is an opaque custom op too (its tile configuration is looked up inside it)."""
    gen = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 4, n, 32, generator=gen).to(DEVICE) for n in (1, 50, 50))
    k, v = k[:, :2], v[:, :2]
    table = wavelet_table(WavePosConfig(num_scales=4), 32, 50, device=DEVICE)
    backend = "inductor" if DEVICE == "cuda" else "aot_eager"
    step = torch.compile(lambda *a: triton_attention(*a, q_offset=49), backend=backend, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(step(q, k, v, table), triton_attention(q, k, v, table, q_offset=49), rtol=0, atol=0)
