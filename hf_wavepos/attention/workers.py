"""Independent pieces of one attention call run on Python threads, each piece single-threaded.

Why: on CPU every PyTorch operation is one OpenMP parallel region, and its threads meet at a
barrier at the end of it; between regions the idle threads spin. A call made of hundreds of
mid-sized operations therefore waits on the slowest thread hundreds of times, and while another
process competes for the cores every wait costs a scheduler time slice (the chunked backend ran
5-10x slower than SDPA that way, SDPA about 1.5x slower). Here the pieces of a call (query
chunks, groups of heads) are pulled from one queue by as many threads as torch may use, and each
thread runs its operations with one intra-op thread: no barrier between operations, and a thread
slowed by other work simply takes fewer pieces. The GIL is released inside every operation.

The helper threads are started once and kept (daemon threads, waiting on a queue between calls;
a forked child starts its own), because a fresh thread pays for its first operations again
(per-thread BLAS buffers): for a decoding step that doubled the time.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from typing import Callable, Iterator, Sequence

import torch

_HELPERS: list["_Helper"] = []
_HELPERS_LOCK = threading.Lock()


class _Helper:
    """One kept helper thread: runs the jobs put on its queue, one intra-op thread each."""

    def __init__(self):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(ready,), daemon=True, name="wavepos-attention").start()
        # torch.set_num_threads also sets the default of threads started later: wait until the
        # helper has set its own, so that the caller's restore (`one_intra_op_thread`) comes after.
        ready.wait()

    def _serve(self, ready: threading.Event) -> None:
        torch.set_num_threads(1)
        ready.set()
        while True:
            job = self.jobs.get()
            job()
            del job  # keep nothing of a finished call alive


def _helpers(count: int) -> list[_Helper]:
    """The first ``count`` kept helper threads, started on first use."""
    with _HELPERS_LOCK:
        while len(_HELPERS) < count:
            _HELPERS.append(_Helper())
        return _HELPERS[:count]


if hasattr(os, "register_at_fork"):  # threads do not survive fork: a child starts its own
    os.register_at_fork(after_in_child=_HELPERS.clear)


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[int]:
    """Run the block with one intra-op thread on this thread; yield the thread count it had.

    Work around `run_pieces` (splitting, concatenating) then opens no OpenMP region either, after
    which idle OpenMP threads would spin on the cores the pieces need.
    """
    previous = torch.get_num_threads()
    if previous > 1:
        torch.set_num_threads(1)
    try:
        yield previous
    finally:
        if previous > 1:
            torch.set_num_threads(previous)


def run_pieces(pieces: Sequence[Callable[[int], None]], threads: int) -> None:
    """Call every ``piece(worker)`` once, on ``threads`` threads (worker 0 is the calling thread).

    Pieces are taken in the given order (put the largest first) by whichever thread is free.
    Each thread keeps the caller's grad and inference modes and runs with one intra-op thread
    (the caller's count is restored afterwards). With ``threads`` <= 1 or a single piece, the
    pieces run in order on the calling thread, its thread count untouched.

    Raises:
        whatever a piece raised (the first, after every thread has stopped).
    """
    if threads <= 1 or len(pieces) <= 1:
        for piece in pieces:
            piece(0)
        return
    order = iter(range(len(pieces)))
    lock = threading.Lock()
    errors: list[BaseException] = []
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def work(worker: int) -> None:
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                while not errors:
                    with lock:
                        index = next(order, None)
                    if index is None:
                        return
                    pieces[index](worker)
        except BaseException as error:  # re-raised by the caller's thread
            errors.append(error)

    with one_intra_op_thread():
        helpers = _helpers(min(threads, len(pieces)) - 1)
        done = [threading.Event() for _ in helpers]
        for worker, (helper, event) in enumerate(zip(helpers, done), start=1):
            helper.jobs.put(lambda worker=worker, event=event: (work(worker), event.set()))
        work(0)
    for event in done:
        event.wait()
    if errors:
        raise errors[0]
