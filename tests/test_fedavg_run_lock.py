"""One run per run directory (refsim/fedavg/run_lock.py), a lock left by ``kill -9`` taken
over, and atomic writes under ``kill -9`` (refsim/fedavg/storage.py)."""

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from refsim import cli
from refsim.data import load_mnist
from refsim.fedavg import FedAvgConfig, from_images, run_fedavg
from refsim.fedavg import run_lock
from refsim.fedavg.run_lock import LOCK_FILE, RunDirBusy, RunLockError, lock_run_dir
from refsim.fedavg.storage import TMP_PREFIX, remove_partial_writes
from refsim.nn import logistic

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _python(code: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=ROOT, **kw)


HOLD = """
    import sys, time
    from refsim.fedavg.run_lock import lock_run_dir
    with lock_run_dir(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
"""


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def test_the_lock_is_exclusive_records_its_holder_and_is_deleted_on_release(tmp_path):
    with lock_run_dir(tmp_path) as stale:
        assert stale is None
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"]
        with pytest.raises(RunDirBusy, match=rf"^{tmp_path} is in use by another refsim run "
                                             rf"\(PID {os.getpid()} on host .*, started .*\); "
                                             rf"wait for it to finish"):
            with lock_run_dir(tmp_path):
                pass
    assert not (tmp_path / LOCK_FILE).exists()
    with lock_run_dir(tmp_path / "new" / "dir"):  # created when needed
        assert (tmp_path / "new" / "dir" / LOCK_FILE).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunLockError, match="cannot create the run directory's lock file"):
        with lock_run_dir(tmp_path / "file" / "run"):
            pass


def test_a_lock_left_by_a_killed_process_is_recognised_and_taken_over(tmp_path):
    holder = _python(HOLD, tmp_path)
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(RunDirBusy, match=f"PID {holder.pid} on host"):
        with lock_run_dir(tmp_path):
            pass
    _kill(holder)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid  # left behind
    with pytest.raises(ProcessLookupError):
        os.kill(holder.pid, 0)  # not alive
    with lock_run_dir(tmp_path) as stale:
        assert stale.pid == holder.pid and f"PID {holder.pid}" in str(stale)
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    (tmp_path / LOCK_FILE).write_bytes(b"\x00garbage")  # an unreadable record: still taken
    with lock_run_dir(tmp_path) as stale:
        assert stale is None


def test_runs_racing_for_one_stale_lock_get_it_one_at_a_time(tmp_path):
    """Six processes try at once, on a directory holding a stale lock file: exactly one
    wins while it holds the lock, the others are told who holds it."""
    go, stop = tmp_path / "go", tmp_path / "stop"
    racer = """
        import os, sys, time
        from refsim.fedavg.run_lock import RunDirBusy, lock_run_dir
        run_dir, go, stop = sys.argv[1:]
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.0005)
        try:
            with lock_run_dir(run_dir):
                print("won", flush=True)
                while not os.path.exists(stop):
                    time.sleep(0.01)
        except RunDirBusy as e:
            print("busy", e, flush=True)
    """
    procs = [_python(racer, tmp_path / "run", go, stop) for _ in range(6)]
    (tmp_path / "run").mkdir()
    # Left by a run killed on this host (a record of another host counts as maybe alive, and
    # a loser could name it before the winner has written its own).
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(
        {"pid": 999999, "host": socket.gethostname(), "started": "then"}) + "\n")
    assert [p.stdout.readline() for p in procs] == ["ready\n"] * 6
    go.touch()
    lines = [p.stdout.readline() for p in procs]
    stop.touch()
    for p in procs:
        p.wait(timeout=60)
        p.stdout.close()
        p.stderr.close()
    assert sum(line == "won\n" for line in lines) == 1, lines
    winner = procs[[line == "won\n" for line in lines].index(True)].pid
    assert all(f"PID {winner} on host" in line for line in lines if line != "won\n")


def test_a_lock_file_deleted_between_open_and_flock_is_opened_again(tmp_path, monkeypatch):
    """The holder deletes the file on release while still holding it; a run that opened the
    old file just before must not count a lock on that deleted file."""
    real_flock, calls = fcntl.flock, []

    def flock(fd, operation):
        if not calls:  # the holder releases between this run's open and its flock
            os.unlink(tmp_path / LOCK_FILE)
        calls.append(fd)
        return real_flock(fd, operation)

    monkeypatch.setattr(run_lock.fcntl, "flock", flock)
    with lock_run_dir(tmp_path):
        assert len(calls) == 2
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def _tiny_setup():
    data = from_images(load_mnist(), np.float32, train_limit=120, test_limit=50)
    parts = [np.arange(k * 30, (k + 1) * 30) for k in range(4)]
    return FedAvgConfig(fraction=0.5, epochs=1, batch_size=10, lr=0.1, rounds=3, seed=1), \
        data, parts


def test_run_fedavg_holds_its_run_dir_and_clears_partial_writes(tmp_path):
    cfg, data, parts = _tiny_setup()
    (tmp_path / "trace").mkdir()
    leftovers = [tmp_path / f"{TMP_PREFIX}dead", tmp_path / "trace" / f"{TMP_PREFIX}dead2"]
    for p in leftovers:
        p.write_bytes(b"half a checkpoint")
    seen = []

    def try_lock(row):
        with pytest.raises(RunDirBusy, match=f"PID {os.getpid()}"):
            with lock_run_dir(tmp_path):
                pass
        seen.append(row.round)

    run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path, trace=True, on_round=try_lock)
    assert seen == [1, 2, 3] and not any(p.exists() for p in leftovers)
    assert not (tmp_path / LOCK_FILE).exists()
    assert remove_partial_writes(tmp_path / "none") == []


def test_refsim_run_on_a_locked_directory_exits_2_naming_the_pid(tmp_path, capsys):
    argv = ["run", "--rounds", "1", "--clients", "5", "--train-limit", "200", "--test-limit",
            "50", "--partition", "iid", "--codec", "float", "--quiet", "--plot", "no",
            "--out", str(tmp_path)]
    with lock_run_dir(tmp_path):
        assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"refsim run: error: {tmp_path} is in use by another refsim run "
                          f"(PID {os.getpid()} on host ")
    assert not (tmp_path / "iid-float").exists()  # nothing was written
    assert cli.main(argv) == 0 and not (tmp_path / LOCK_FILE).exists()


WRITER = """
    import sys
    from refsim.fedavg.storage import atomic_write_bytes
    target, size = sys.argv[1], int(sys.argv[2])
    payloads = [b"a" * size, b"b" * size]
    atomic_write_bytes(target, payloads[0])
    print("first", flush=True)
    i = 1
    while True:
        atomic_write_bytes(target, payloads[i % 2])
        i += 1
"""


def test_atomic_writes_killed_at_random_moments_leave_the_old_or_the_new_file(tmp_path):
    """kill -9 while a 4 MB file is rewritten in a loop: the file is always one whole
    version, and the temporary files left are the only debris (removed under the lock)."""
    size, rng = 4 << 20, np.random.default_rng(0)
    target = tmp_path / "checkpoint.npz"
    for _ in range(4):
        writer = _python(WRITER, target, size)
        assert writer.stdout.readline() == "first\n"
        time.sleep(float(rng.uniform(0.0, 0.2)))
        _kill(writer)
        assert target.read_bytes() in (b"a" * size, b"b" * size)
        debris = [p for p in tmp_path.iterdir() if p != target]
        assert all(p.name.startswith(TMP_PREFIX) for p in debris)
        with lock_run_dir(tmp_path):
            assert sorted(remove_partial_writes(tmp_path)) == sorted(map(str, debris))
        assert list(tmp_path.iterdir()) == [target]
