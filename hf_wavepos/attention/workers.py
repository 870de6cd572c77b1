"""Independent pieces of one attention call run on Python threads, each piece single-threaded.

Why: on CPU every PyTorch operation is one OpenMP parallel region, and its threads meet at a
barrier at the end of it; between regions the idle threads spin. A call made of hundreds of
mid-sized operations therefore waits on the slowest thread hundreds of times, and while another
process competes for the cores every wait costs a scheduler time slice (the chunked backend ran
5-10x slower than SDPA that way, SDPA about 1.5x slower). Here the chunks of a call are pulled
from one queue by as many threads as torch may use, and each thread runs its operations with one
intra-op thread: no barrier between operations, and a thread slowed by other work simply takes
fewer chunks. The GIL is released inside every operation.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Sequence

import torch


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
    Each thread keeps the caller's grad and inference modes and runs with one intra-op thread;
    the caller's thread count is restored afterwards. With ``threads`` <= 1 or a single piece,
    the pieces run in order on the calling thread, its thread count untouched.

    Raises:
        whatever a piece raised (the first, after every thread has stopped).
    """
    if threads <= 1 or len(pieces) <= 1:
        for piece in pieces:
            piece(0)
        return
    queue = iter(range(len(pieces)))
    lock = threading.Lock()
    errors: list[BaseException] = []
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def work(worker: int) -> None:
        torch.set_num_threads(1)
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                while not errors:
                    with lock:
                        index = next(queue, None)
                    if index is None:
                        return
                    pieces[index](worker)
        except BaseException as error:  # re-raised by the caller's thread
            errors.append(error)

    previous = torch.get_num_threads()
    helpers = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(1, min(threads, len(pieces)))]
    try:
        for helper in helpers:
            helper.start()
        work(0)
    finally:
        for helper in helpers:
            helper.join()
        torch.set_num_threads(previous)
    if errors:
        raise errors[0]
