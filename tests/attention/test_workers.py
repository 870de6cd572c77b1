"""Chunks on Python threads (`run_pieces`) and the chunked backend with one thread and with two."""

import threading

import pytest
import torch

from attention_cases import EXACT, PAPER, SMALL_SCALES, errors_vs_truth, make_inputs
from hf_wavepos import wavelet_table
from hf_wavepos.attention import chunked_attention
from hf_wavepos.attention.workers import run_pieces


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def test_every_piece_runs_once_single_threaded_and_the_count_is_restored(two_threads):
    seen, lock = [], threading.Lock()

    def piece(index):
        def run(worker):
            with lock:
                seen.append((index, worker, torch.get_num_threads(), torch.is_grad_enabled()))
        return run

    with torch.no_grad():
        run_pieces([piece(i) for i in range(12)], 2)
    assert sorted(i for i, *_ in seen) == list(range(12))
    assert {threads for _, _, threads, _ in seen} == {1}
    assert not any(grad for *_, grad in seen)  # the caller's grad mode
    assert torch.get_num_threads() == 2


def test_a_failing_piece_raises_in_the_caller(two_threads):
    def fail(worker):
        raise ValueError("piece failed")

    with pytest.raises(ValueError, match="piece failed"):
        run_pieces([lambda w: None, fail, lambda w: None], 2)
    assert torch.get_num_threads() == 2


def test_one_thread_runs_in_order_on_the_caller(two_threads):
    order = []
    run_pieces([lambda w, i=i: order.append((i, w, threading.get_ident())) for i in range(3)], 1)
    assert [(i, w) for i, w, _ in order] == [(0, 0), (1, 0), (2, 0)]
    assert {ident for *_, ident in order} == {threading.get_ident()}


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_chunked_same_result_on_one_and_two_threads(dtype, tol):
    q, k, v = make_inputs(2, 6, 3, 300, 300, 16, dtype=dtype, seed=9)
    table = wavelet_table(PAPER, 16, 300, dtype=dtype)
    grad = torch.randn(q.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = chunked_attention(q, k, v, table, chunk_size=64)
            results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results):
        torch.testing.assert_close(one, two, rtol=0, atol=tol)


def _pieces_in_child(queue):
    results = []
    run_pieces([lambda w, i=i: results.append(i) for i in range(4)], 2)
    queue.put(sorted(results))


def test_kept_threads_leave_the_default_count_and_survive_fork(two_threads):
    import multiprocessing

    run_pieces([lambda w: None] * 4, 2)  # starts the kept helper thread
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [2]  # a thread started later still gets the caller's count
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_pieces_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and queue.get(timeout=5) == [0, 1, 2, 3]  # the child starts its own helpers


def _transposed_inputs(B, H, Hkv, Lq, Lk, D, seed):
    """q, k, v as the projections give them: (B, L, heads, D) transposed to (B, heads, L, D) views."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Lq, H, D, generator=gen, dtype=torch.float64).transpose(1, 2)
    k, v = (torch.randn(B, Lk, Hkv, D, generator=gen, dtype=torch.float64).transpose(1, 2) for _ in range(2))
    assert not q.is_contiguous() and not k.is_contiguous()
    return q, k, v


@pytest.mark.parametrize("case", ["static_cache_padding", "documents_alibi"])
def test_chunks_on_two_threads_match_the_float64_reference(two_threads, case):
    """Odd shapes, grouped heads, non-contiguous inputs, masks, chunks of several sizes on two
    threads: output and gradients within EXACT of the reference."""
    B, H, Hkv, D = 2, 6, 3, 16
    if case == "static_cache_padding":  # queries 40 .. 190 of 203 cached keys, left padding
        Lq, Lk, offset = 151, 203, 40
        pad = torch.ones(B, Lk, dtype=torch.bool)
        pad[0, :25] = False
        kwargs = {"key_padding_mask": pad}
    else:
        Lq, Lk, offset = 197, 197, 0
        docs = torch.zeros(B, Lk, dtype=torch.long)
        docs[1, 77:] = 1
        kwargs = {"document_ids": docs, "alibi_slopes": torch.tensor([2.0**-k for k in range(1, H + 1)], dtype=torch.float64)}
    q, k, v = _transposed_inputs(B, H, Hkv, Lq, Lk, D, seed=Lk)
    table = wavelet_table(SMALL_SCALES, D, Lk, dtype=torch.float64)  # band skipping at this length
    fn = lambda q, k, v, table, **kw: chunked_attention(q, k, v, table, chunk_size=37, **kw)  # noqa: E731
    errors = errors_vs_truth(fn, q, k, v, table, torch.float64, device="cpu", q_offset=offset, **kwargs)
    assert max(errors) <= EXACT, errors
