"""Clients on threads (refsim/fedavg/client_threads.py, FedAvgConfig.client_threads): the
scheduler's order, errors and early exits, and whole runs bit for bit equal to one client at a
time (same process, so the same BLAS thread count)."""

import dataclasses
import threading
import time

import numpy as np
import pytest
from checks import contiguous_partition, mnist_slice

from refsim.fedavg import DType, FedAvgConfig, run_fedavg
from refsim.fedavg.client_opt import ClientOpt, ClientOptConfig, ClientStatePolicy
from refsim.fedavg.client_threads import in_order
from refsim.nn import cnn_mnist, mlp_2nn

SIZES = [23, 23, 31, 11, 23, 17, 23]  # unequal n_k, two of them stackable groups


def _sleepy(i, log, lock):
    def task():
        with lock:
            log.append(("start", i))
        time.sleep(0.002 * ((7 * i) % 5))  # later tasks often finish first
        return i * i
    return task


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_results_come_in_submission_order_whatever_finishes_first(threads):
    log, lock = [], threading.Lock()
    tasks = [_sleepy(i, log, lock) for i in range(13)]
    assert list(in_order(tasks, threads)) == [i * i for i in range(13)]
    assert sorted(i for _, i in log) == list(range(13))  # each task ran once


def test_one_thread_runs_each_task_when_its_result_is_asked_for():
    ran = []
    it = in_order([lambda i=i: ran.append(i) or i for i in range(3)], 1)
    assert ran == []
    assert next(it) == 0 and ran == [0]


def test_no_more_than_twice_the_threads_are_computed_ahead():
    started = []
    gate = threading.Event()

    def task(i):
        started.append(i)
        if i == 0:
            gate.wait(5)  # the first result is late: the window must stop the others
        return i

    it = in_order([lambda i=i: task(i) for i in range(20)], 2)
    consumer = threading.Thread(target=lambda: next(it))
    consumer.start()
    time.sleep(0.2)
    assert len(started) == 4  # 2 * threads submitted, 3 of them done, none beyond
    gate.set()
    consumer.join()
    assert list(it) == list(range(1, 20))


def test_a_failing_task_raises_at_its_position_and_the_rest_are_cancelled():
    ran = []

    def task(i):
        ran.append(i)
        if i == 2:
            raise ValueError("client 2: bad data")
        return i

    got = []
    with pytest.raises(ValueError, match="client 2: bad data"):
        for r in in_order([lambda i=i: task(i) for i in range(50)], 2):
            got.append(r)
    assert got == [0, 1]
    assert max(ran) < 2 + 2 * 2 + 1  # nothing past the window was started
    assert not [t for t in threading.enumerate() if t.name.startswith("refsim-client")]


def test_stopping_early_leaves_no_thread_behind():
    it = in_order([lambda i=i: time.sleep(0.01) or i for i in range(30)], 3)
    assert next(it) == 0
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("refsim-client")]


@pytest.mark.parametrize("bad, error, says", [
    (0, ValueError, "threads must be >= 1, got 0"), (-1, ValueError, "threads must be >= 1"),
    (1.5, TypeError, "threads must be an integer"), (True, TypeError, "must be an integer"),
    ("2", TypeError, "threads must be an integer, got str")])
def test_the_thread_count_is_checked(bad, error, says):
    with pytest.raises(error, match=says):
        list(in_order([lambda: 1], bad))


def _run(cfg, model, data, parts, **kw):
    return run_fedavg(cfg, model, data, parts, **kw)


def _assert_same_run(a, b):
    assert a.params.tobytes() == b.params.tobytes()
    assert [r.to_dict() for r in a.rounds] == [r.to_dict() for r in b.rounds]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["2nn", "cnn"])
def test_a_run_on_client_threads_is_the_reference_run_bit_for_bit(name, dtype):
    model = {"2nn": mlp_2nn, "cnn": cnn_mnist}[name]()
    data, parts = mnist_slice(dtype, sum(SIZES), 40), contiguous_partition(SIZES)
    base = FedAvgConfig(fraction=1.0, epochs=1, batch_size=5, lr=0.05, seed=3, dtype=DType(dtype),
                        rounds=1 if name == "cnn" else 2)
    ref = _run(base, model, data, parts)
    for threads in (2, 3) if name == "cnn" else (2, 3, 8):
        _assert_same_run(_run(dataclasses.replace(base, client_threads=threads), model, data,
                              parts), ref)


def test_threads_with_stacked_groups_and_kept_client_states_change_no_bit():
    data, parts = mnist_slice("float32", sum(SIZES), 20), contiguous_partition(SIZES)
    stacked = FedAvgConfig(fraction=1.0, batch_size=5, rounds=2, client_stack=3)
    _assert_same_run(_run(dataclasses.replace(stacked, client_threads=2), mlp_2nn(), data, parts),
                     _run(stacked, mlp_2nn(), data, parts))
    adam = FedAvgConfig(fraction=0.5, batch_size=7, lr=0.001, rounds=3, seed=1,
                        client_opt=ClientOptConfig(ClientOpt.ADAM, state=ClientStatePolicy.KEEP))
    _assert_same_run(_run(dataclasses.replace(adam, client_threads=3), mlp_2nn(), data, parts),
                     _run(adam, mlp_2nn(), data, parts))


class _Stop(Exception):
    pass


def test_a_run_resumes_under_another_thread_count_bit_for_bit(tmp_path):
    data, parts = mnist_slice("float32", sum(SIZES), 20), contiguous_partition(SIZES)
    cfg = FedAvgConfig(fraction=0.5, batch_size=5, rounds=3, seed=2)
    whole = _run(cfg, mlp_2nn(), data, parts)

    def stop(row):
        if row.round == 1:
            raise _Stop

    with pytest.raises(_Stop):
        _run(cfg, mlp_2nn(), data, parts, run_dir=tmp_path, on_round=stop)
    resumed = _run(dataclasses.replace(cfg, client_threads=2), mlp_2nn(), data, parts,
                   run_dir=tmp_path, resume=True)
    _assert_same_run(resumed, whole)


def test_a_client_error_on_a_thread_is_the_same_error():
    data, parts = mnist_slice("float32", sum(SIZES), 20), contiguous_partition(SIZES)
    parts = [*parts[:3], np.array([], np.int64), *parts[4:]]  # client 3 has no examples
    cfg = FedAvgConfig(fraction=1.0, batch_size=5, rounds=1)
    with pytest.raises(ValueError) as one:
        _run(cfg, mlp_2nn(), data, parts)
    with pytest.raises(ValueError) as three:
        _run(dataclasses.replace(cfg, client_threads=3), mlp_2nn(), data, parts)
    assert str(three.value) == str(one.value)
    assert not [t for t in threading.enumerate() if t.name.startswith("refsim-client")]


def test_the_field_is_checked_and_the_gpu_backend_refuses_it():
    with pytest.raises(ValueError, match="client_threads"):
        FedAvgConfig(client_threads=0)
    with pytest.raises(ValueError, match="client_threads > 1 trains clients on CPU threads"):
        FedAvgConfig(client_threads=2, backend="cupy")


def test_the_client_step_kernels_release_the_gil():
    """What lets the threads overlap: every Numba kernel of the client step is nogil."""
    from refsim.nn import fused, im2col, pool, sgd
    kernels = [im2col._im2col_kernel, im2col._col2im_kernel, fused._forward_kernel,
               fused._backward_kernel, pool._maxpool_forward_kernel,
               pool._maxpool_backward_kernel, sgd._sgd_kernel]
    assert all(k.targetoptions.get("nogil") for k in kernels)
