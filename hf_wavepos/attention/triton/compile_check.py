"""Compile every kernel launch for a GPU target ahead of time, without a GPU, and read its resources.

The Triton interpreter runs the kernels on the CPU but accepts what a GPU compile refuses
(``tl.dot`` with K < 16, any register or shared-memory budget). This module builds the launches
the package makes (`forward.forward_launches`, `backward.backward_launches`,
`decode.decode_launches`) from ``meta`` tensors, lets Triton's own launcher bind and specialise
their arguments for the target (pointer alignment, int32 / int64 and ==1 specialisation, exactly
as at run time), and compiles them through the ahead-of-time path::

    triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32))

ptxas (shipped in the triton wheel) reports registers and spills per thread, Triton the shared
memory per block. `run` compiles a matrix of `Case` s (dtypes x head dims x input variants x
targets) in a process pool; `problems` lists what breaks the limits of `configs`. Used by
``bench/triton_compile.py`` (JSON + table) and the CI test ``tests/attention/test_triton_compile.py``.

Written against Triton 3.9's compiler API (``ASTSource``, ``create_function_from_signature``,
``knobs.nvidia.dump_ptxas_log``); these are internal and may move between Triton releases.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch

from hf_wavepos.attention.triton.configs import (
    COMPUTE_CAPABILITY,
    SHARED_FRACTION,
    SHARED_LIMIT,
    SPILL_LIMIT,
    TABLE,
    configs_for,
    default_chunk,
)
from hf_wavepos.attention.triton.launch import Extras, Launch
from hf_wavepos.attention.triton.support import padded_head_dim

VARIANTS = ("plain", "full")


@dataclass(frozen=True)
class Case:
    """One call shape to compile.

    variant ``plain``: q, k, v transposed views of (B, L, H, D) projections (Llama's layout),
    no masks, H = Hkv (G = 1 is specialised as a constant), int32 strides.
    variant ``full``: q, k, v chunks of one fused (B, L, H + 2 Hkv, D) projection (GPT-NeoX's
    non-dense layout) at 2^21 tokens, so batch strides exceed 2^31 (int64), with a key padding
    mask, document ids, a dense mask, ALiBi slopes and grouped-query attention (G = 4).
    """

    dtype: str
    head_dim: int
    variant: str
    target: str


def all_cases() -> list[Case]:
    """The CI matrix: every row of `configs.TABLE`, each of its dtypes in the ``full`` variant
    (every feature, int64 strides) and, at head dims 64 and 128, the common ``plain``
    specialisation in bfloat16 and float32 (float16's kernels differ from bfloat16's only in the
    element type, which ``full`` compiles). 144 compiles, about 170 s of CPU time."""
    dtypes = {"16-bit": ("float16", "bfloat16"), "float32": ("float32",)}
    return [
        Case(dtype, head_dim, variant, target)
        for target, precision, head_dim in sorted(TABLE)
        for dtype in dtypes[precision]
        for variant in VARIANTS
        if variant == "full" or (head_dim <= 128 and dtype != "float16")
    ]


def case_launches(case: Case) -> list[Launch]:
    """The launches (forward; backward delta, dq, dk/dv; decoding split, combine) of one case,
    on meta tensors, with the target's default configurations from `configs`."""
    from hf_wavepos.attention.triton.backward import backward_launches
    from hf_wavepos.attention.triton.decode import decode_launches
    from hf_wavepos.attention.triton.forward import forward_launches

    dtype = getattr(torch, case.dtype)
    D = case.head_dim
    configs = configs_for(case.target, dtype, D)
    chunk = default_chunk(D)
    n_chunks = padded_head_dim(D) // chunk

    def meta(shape, dt=dtype):
        return torch.empty(shape, dtype=dt, device="meta")

    if case.variant == "plain":
        B, H, Hkv, L = 2, 8, 8, 4000
        q, k, v = (meta((B, L, h, D)).transpose(1, 2) for h in (H, Hkv, Hkv))
        masks = (None, None, None, None)
    elif case.variant == "full":
        B, H, Hkv, L = 2, 8, 2, 2**21
        q, k, v = meta((B, L, H + 2 * Hkv, D)).transpose(1, 2).split([H, Hkv, Hkv], dim=1)
        masks = (meta((B, L), torch.bool), meta((B, L), torch.int64), meta((B, 1, L, L), torch.bool),
                 meta((H,), torch.float32))
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {case.variant!r}.")
    table = meta((L, D))
    sup = meta((n_chunks,), torch.int32)
    extras = Extras.of(*masks, sup)
    launches, out, lse = forward_launches(q, k, v, table, sup, sup, extras, 0.125, 0, configs.forward, chunk)
    bwd, *_ = backward_launches(
        out, q, k, v, out, lse, table, sup, sup, sup, extras, 0.125, 0,
        configs.backward_dq, configs.backward_dkdv, chunk,
    )
    pad, doc, mask, slopes = masks
    decode_extras = Extras.of(pad, doc, None if mask is None else mask[:, :, -1:], slopes, sup)
    dec, _ = decode_launches(
        q[:, :, -1:], k, v, table, sup, sup, decode_extras, 0.125, L - 1, configs.decode, chunk, 264,
    )
    return launches + bwd + dec


def _bind(launch: Launch, target):
    """What Triton's launcher would compile for ``launch``: (signature, constexprs, attrs, options)."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.meta)
    names = [p.name for p in kernel.params]
    signature = {name: spec[0] for name, spec in zip(names, specialization)}
    constexprs = {(i,): bound[name] for i, name in enumerate(names) if signature[name] == "constexpr"}
    attrs = {
        (i,): backend.parse_attr(spec[1])
        for i, spec in enumerate(specialization)
        if spec[0] != "constexpr" and isinstance(spec[1], str)
    }
    return signature, constexprs, attrs, backend.parse_options(options)


_PTXAS = {
    "registers": r"Used (\d+) registers",
    "spill_stores": r"(\d+) bytes spill stores",
    "spill_loads": r"(\d+) bytes spill loads",
    "stack_frame": r"(\d+) bytes stack frame",
}


def compile_launch(launch: Launch, target_name: str) -> dict:
    """Compile one launch for ``sm80`` / ``sm90``; its resources per thread (ptxas) and per block.

    Returns:
        dict with kernel, num_warps, num_stages, block, registers, spill_stores, spill_loads,
        stack_frame (bytes per thread), shared (bytes per block), seconds (compile time); or
        with ``error`` (the compiler's message) when the compile fails.
    """
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", COMPUTE_CAPABILITY[target_name], 32)
    meta = launch.meta
    row = dict(kernel=launch.name, num_warps=meta.get("num_warps", 4), num_stages=meta.get("num_stages", 3),
               block=meta.get("BLOCK", meta.get("BLOCK_N", meta.get("BLOCK_S"))))
    start = time.perf_counter()
    log = io.StringIO()
    try:
        signature, constexprs, attrs, options = _bind(launch, target)
        knobs.nvidia.dump_ptxas_log = True  # ptxas -v output, printed by triton
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(launch.kernel, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
    except Exception as error:  # noqa: BLE001 - a failed compile is a result to report
        return dict(row, error=f"{type(error).__name__}: {str(error)[-2000:]}", seconds=time.perf_counter() - start)
    text = log.getvalue()
    for name, pattern in _PTXAS.items():
        found = re.findall(pattern, text)
        row[name] = max(int(x) for x in found) if found else (None if name == "registers" else 0)
    row["shared"] = compiled.metadata.shared
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _worker_init(cache_dir: str) -> None:
    from triton import knobs

    knobs.cache.dir = cache_dir  # a private cache, left clean
    knobs.compilation.always_compile = True  # ptxas reports registers and spills only when it runs
    torch.set_num_threads(1)


def _compile_job(job: tuple[Case, int]) -> dict:
    case, index = job
    launch = case_launches(case)[index]
    return dict(asdict(case), **compile_launch(launch, case.target))


@contextlib.contextmanager
def _without_interpreter():
    """Workers must compile: they inherit the environment, so drop TRITON_INTERPRET meanwhile."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


# Compile cost grows with the kernel; the pool takes the longest first.
_COST = {"_bwd_dkdv_kernel": 5, "_bwd_dq_kernel": 4, "_fwd_kernel": 3, "_decode_split_kernel": 2}


def run(cases: list[Case] | None = None, workers: int | None = None) -> dict:
    """Compile every launch of ``cases`` (default `all_cases`) in fresh worker processes.

    The workers are spawned without ``TRITON_INTERPRET`` (the kernels must be real JIT functions
    there), so this also works from a process that runs the interpreter, e.g. the test suite.

    Args:
        workers: processes (default: the CPU count); each compile is single-threaded.

    Returns:
        ``{"rows": [...], "seconds": wall time, "workers": n}``, one row per launch
        (`compile_launch`'s fields plus the case's), sorted by target, head dim, dtype, variant.
    """
    import multiprocessing

    start = time.perf_counter()
    cases = cases if cases is not None else all_cases()
    jobs = [((case, index), _COST.get(launch.kernel.fn.__name__, 1) * (3 if case.dtype == "float32" else 1))
            for case in cases for index, launch in enumerate(case_launches(case))]
    jobs.sort(key=lambda job: -job[1])
    workers = workers or os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch threads
    with tempfile.TemporaryDirectory(prefix="wavepos_triton_cache_") as cache_dir, _without_interpreter():
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(cache_dir,)) as pool:
            rows = list(pool.map(_compile_job, [job for job, _ in jobs]))
    rows.sort(key=lambda r: (r["target"], r["head_dim"], r["dtype"], r["variant"], r["kernel"]))
    return dict(rows=rows, seconds=round(time.perf_counter() - start, 1), workers=workers)


def problems(rows: list[dict]) -> list[str]:
    """Every compile error, spill over `SPILL_LIMIT` and shared memory over `SHARED_FRACTION` of the limit."""
    found = []
    for r in rows:
        what = f"{r['kernel']} {r['target']} {r['dtype']} D={r['head_dim']} {r['variant']}"
        if "error" in r:
            found.append(f"{what}: compile failed: {r['error'][:500]}")
            continue
        if r["spill_stores"] > SPILL_LIMIT:
            found.append(f"{what}: spills {r['spill_stores']} B per thread (limit {SPILL_LIMIT})")
        limit = int(SHARED_FRACTION * SHARED_LIMIT[r["target"]])
        if r["shared"] > limit:
            found.append(f"{what}: {r['shared']} B shared memory (limit {limit})")
    return found


def format_table(rows: list[dict]) -> str:
    """A fixed-width table of the rows: registers / spills / stack per thread, shared per block."""
    head = (f"{'target':6} {'dtype':8} {'D':>3} {'variant':7} {'kernel':20} {'blk':>3} {'wrp':>3} {'stg':>3} "
            f"{'regs':>4} {'spill_st':>8} {'spill_ld':>8} {'stack':>6} {'shared':>7} {'sec':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        start = (f"{r['target']:6} {r['dtype']:8} {r['head_dim']:>3} {r['variant']:7} {r['kernel']:20} "
                 f"{r['block'] or '':>3} {r['num_warps']:>3} {r['num_stages']:>3} ")
        if "error" in r:
            lines.append(start + "COMPILE ERROR " + r["error"].splitlines()[0][:80])
        else:
            lines.append(start + f"{r['registers']:>4} {r['spill_stores']:>8} {r['spill_loads']:>8} "
                                 f"{r['stack_frame']:>6} {r['shared']:>7} {r['seconds']:>5}")
    return "\n".join(lines)
