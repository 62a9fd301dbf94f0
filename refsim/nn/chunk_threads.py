"""Lanes of threads for a layer's batch chunks: the calling thread plus worker threads of its own.

refsim's convolutions run over chunks of the batch (``refsim.nn.conv``); each chunk's work
(im2col, its matrix products, col2im) writes only its own part of the outputs and releases
the GIL where its time goes (BLAS, the ``nogil`` Numba kernels). :class:`ChunkThreads` runs
those chunks side by side on L lanes with a fixed assignment: lane 0 is the calling thread,
lanes 1..L-1 are worker threads made for this object, and chunk k always runs on lane
k mod L. The fixed assignment is the point. A chunk's im2col block, written in the forward
pass, is read again in the backward pass by the same thread, so it is still in that core's
cache; and the caller works instead of waiting. On a 2-core Zen 5 VM (2026-12-04) the MNIST
CNN's B = 10 step took 0.81x its serial time this way and 1.09x (slower) with a
``ThreadPoolExecutor(2)`` handing out the same chunks to whichever thread was free
(docs/benchmarks.md).

The results are the serial loop's, bit for bit: the chunks are the same, each runs the same
calls on the same operands, and :meth:`ChunkThreads.map` returns the results in chunk order
(``tests/test_nn_step_threads.py``). Give the lanes the cores: with OpenBLAS's own threads
beside them the cores are oversubscribed, so run with ``OPENBLAS_NUM_THREADS=1``.

The object holds threads, so it is made and closed by the caller (``with ChunkThreads(2) as
lanes: ...``); refsim keeps none of its own. One object may serve several caller threads at
once (their chunks queue on the same lanes); a chunk's work must not call ``map`` itself.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["ChunkThreads"]

T = TypeVar("T")


class ChunkThreads:
    """L lanes for batch chunks: the calling thread and L - 1 worker threads.

    >>> with ChunkThreads(2) as lanes:
    ...     lanes.map(lambda k: k * k, 5)
    [0, 1, 4, 9, 16]
    """

    def __init__(self, lanes: int):
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"ChunkThreads: lanes must be an int >= 1, got {lanes!r}")
        self.lanes = lanes
        self._pid = os.getpid()
        self._closed = False
        self._inboxes = [queue.SimpleQueue() for _ in range(lanes - 1)]
        self._workers = [threading.Thread(target=_serve, args=(inbox,), daemon=True,
                                          name=f"refsim-chunks-{j + 1}")
                         for j, inbox in enumerate(self._inboxes)]
        for worker in self._workers:
            worker.start()

    def map(self, work: Callable[[int], T], count: int) -> list[T]:
        """[work(0), ..., work(count - 1)], chunk k run on lane k mod L, returned once every
        lane has finished. If chunks raise, the exception of the first of them (in chunk order)
        is raised; each lane stops at its first failing chunk, the other lanes run to their end.
        """
        if self._closed:
            raise RuntimeError("ChunkThreads: map after close; make a new one")
        if os.getpid() != self._pid:
            raise RuntimeError(f"ChunkThreads: made in process {self._pid}, whose threads a "
                               f"forked child (process {os.getpid()}) does not have; make one "
                               "in the child")
        results: list = [None] * count
        failures: dict[int, BaseException] = {}

        def run_lane(lane: int) -> None:
            for k in range(lane, count, self.lanes):
                try:
                    results[k] = work(k)
                except BaseException as error:  # re-raised by the caller, in chunk order
                    failures[k] = error
                    return

        used = min(self.lanes, count)
        finished = [threading.Event() for _ in range(used - 1)]
        for lane in range(1, used):
            self._inboxes[lane - 1].put((run_lane, lane, finished[lane - 1]))
        run_lane(0)
        for event in finished:
            event.wait()
        if failures:
            raise failures[min(failures)]
        return results

    def close(self) -> None:
        """Stop the worker threads and wait for them (after the chunks queued so far)."""
        if self._closed or os.getpid() != self._pid:
            self._closed = True
            return
        self._closed = True
        for inbox in self._inboxes:
            inbox.put(None)
        for worker in self._workers:
            worker.join()

    def __enter__(self) -> ChunkThreads:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ChunkThreads({self.lanes}{', closed' if self._closed else ''})"


def _serve(inbox: queue.SimpleQueue) -> None:
    """A worker lane: run each (run_lane, lane, finished) job in order until None arrives."""
    while True:
        job = inbox.get()
        if job is None:
            return
        run_lane, lane, finished = job
        try:
            run_lane(lane)
        finally:
            finished.set()
