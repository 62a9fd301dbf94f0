"""Clients on threads (``FedAvgConfig.client_threads``): the round's clients, several at once.

Algorithm 1 of McMahan et al. (AISTATS 2017, arXiv:1602.05629) runs ClientUpdate(k, w_t) for
the m sampled clients "in parallel": each is a function of w_t, its own data and its own
random streams (``make_rng(seed, purpose, round, k)``), and nothing one client computes is
read by another. So the clients can train at the same time, on threads of one process, and
each gives the bits it gives alone: the same operations, in the same order, on the same
inputs. The server still consumes the results in ascending position, so the reports, the
weighted sum and every fact of the round are those of ``client_threads = 1``
(``tests/test_fedavg_client_threads.py`` checks this bit for bit).

Threads help because the client step releases the GIL where its time goes: NumPy's matrix
products (BLAS) and the Numba kernels of ``refsim.nn`` (compiled ``nogil=True``). What is
left under the GIL is the Python of each step (about 0.3 ms of a 10-15 ms CNN step at
B = 10). Give the threads the cores BLAS would otherwise use: run with
``OPENBLAS_NUM_THREADS=1`` (or ``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``) and
``client_threads`` = the number of cores. A multi-threaded BLAS beside several client
threads oversubscribes the cores (docs/benchmarks.md has the figures). BLAS's thread count
is also what the bits depend on (docs/determinism.md): the client threads never change them.

This module only schedules: :func:`in_order` runs callables on a thread pool and yields
their results in submission order, with at most ``2 * threads`` results computed ahead of
the consumer (so a round of many clients does not hold every client's weights at once).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from refsim.fedavg.config import check_int

__all__ = ["in_order"]

T = TypeVar("T")


def in_order(tasks: Sequence[Callable[[], T]], threads: int) -> Iterator[T]:
    """Yield ``task()`` for each task, in order, computed on up to ``threads`` threads.

    threads = 1 calls each task in the calling thread when its result is asked for (no pool).
    Otherwise the tasks run on a ``ThreadPoolExecutor`` of ``min(threads, len(tasks))``
    threads, at most ``2 * threads`` ahead of the consumer. An exception raised by a task is
    raised here, at that task's position (the results before it are yielded first); the tasks
    not yet started are then cancelled, and those running are waited for, so no thread
    outlives the call (the same when the consumer stops early).

    >>> list(in_order([lambda i=i: i * i for i in range(5)], threads=2))
    [0, 1, 4, 9, 16]
    """
    threads = check_int("threads", threads, 1)
    if threads == 1 or len(tasks) <= 1:
        for task in tasks:
            yield task()
        return
    pool = ThreadPoolExecutor(max_workers=min(threads, len(tasks)),
                              thread_name_prefix="refsim-client")
    try:
        pending = deque()
        queued = iter(tasks)
        for task in queued:  # fill the window, then one more per result taken
            pending.append(pool.submit(task))
            if len(pending) == 2 * threads:
                break
        while pending:
            result = pending.popleft().result()
            task = next(queued, None)
            if task is not None:
                pending.append(pool.submit(task))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
