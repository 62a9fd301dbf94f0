"""Running TFF from refsim's tests: the job directory, the TFF process, and what was measured.

refsim's venv never has TensorFlow; ``tests/tff_side/replay.py`` runs in TFF's own venv, found
through ``$REFSIM_TFF_PYTHON``. :class:`TFFJob` collects cases (dicts for replay.py, plus the
files they name), runs them all in one TFF process (TensorFlow alone takes ~15 s to import),
and reads back what TFF wrote. The process runs in a session (and process group) of its own,
and the group is always ended by its id afterwards: TFF starts a ``worker_binary`` that
outlives Python and holds its stdout open (left behind, it hangs CI). :func:`group_members`
is how the tests check that nothing of the group is left.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time

import numpy as np

ENV = "REFSIM_TFF_PYTHON"
REPLAY = pathlib.Path(__file__).parent / "tff_side" / "replay.py"
SKIP_REASON = (
    f"TFF cross-checks need ${ENV}: the python of a TensorFlow Federated 0.87 venv, built with "
    "`python3.11 -m venv tff-venv && tff-venv/bin/pip install -r ../shared/tff/requirements.txt"
    " && tff-venv/bin/pip install --no-deps tensorflow-federated==0.87.0 google-vizier==0.1.11`"
    f" (as .ci/run does), then {ENV}=$PWD/tff-venv/bin/python")


def tff_python() -> str | None:
    """The TFF venv's python from the environment, or None when the variable is unset.
    Set to a path that does not exist it is an error (CI sets it and must not skip)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    if not os.path.exists(path):
        raise FileNotFoundError(f"${ENV} is {path!r}, which does not exist")
    return path


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command) of the live (not zombie) processes of process group ``pgid``, from /proc
    (Linux); elsewhere [(pgid, "?")] while ``killpg(pgid, 0)`` still reaches someone."""
    proc = pathlib.Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [(pgid, "?")]
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm_end = stat.rindex(")")
        fields = stat[comm_end + 2:].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append((int(entry.name), stat[stat.index("(") + 1:comm_end]))
    return found


def run_in_own_group(argv: list[str], log_path: pathlib.Path, timeout: float
                     ) -> tuple[int, list[tuple[int, str]]]:
    """Run ``argv`` in a new session, wait up to ``timeout`` s, then always SIGKILL its process
    group (by the group id, which is the child's pid) and wait until no live member is left.

    Returns (exit code, or -9 on timeout; the members still alive 10 s after the kill)."""
    with open(log_path, "wb") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    pgid = child.pid  # start_new_session: the child leads its own session and process group
    try:
        rc = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = -9
    finally:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
    deadline = time.monotonic() + 10.0
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return rc, group_members(pgid)


class TFFJob:
    """The cases of one TFF run, in ``root``; refsim's own results are kept beside them."""

    def __init__(self, root: pathlib.Path):
        self.root = pathlib.Path(root)
        self.cases: list[dict] = []
        self.refsim: dict[str, object] = {}
        self.leftover: list[tuple[int, str]] = []
        self.wall_s = None

    def save(self, name: str, **arrays) -> str:
        np.savez(self.root / name, **arrays)
        return name

    def add(self, case: dict) -> None:
        if any(c["name"] == case["name"] for c in self.cases):
            raise ValueError(f"two cases named {case['name']!r}")
        self.cases.append(case)

    def run(self, python: str, timeout: float) -> None:
        """Run every case in one TFF process; AssertionError with the log's tail on failure."""
        (self.root / "job.json").write_text(json.dumps({"cases": self.cases}))
        log = self.root / "tff.log"
        start = time.perf_counter()
        rc, self.leftover = run_in_own_group([python, str(REPLAY), str(self.root)], log,
                                             timeout)
        self.wall_s = time.perf_counter() - start
        if rc != 0:
            tail = log.read_text(errors="replace")[-4000:]
            raise AssertionError(f"TFF job failed (exit {rc}, {self.wall_s:.0f} s):\n{tail}")

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.root / f"{name}.npz") as z:
            return {k: z[k] for k in z.files}

    def info(self, name: str) -> dict:
        return json.loads((self.root / f"{name}.json").read_text())


def keras_list(arrays: dict, prefix: str) -> list[np.ndarray]:
    """[prefix w0, prefix w1, ...] of a replay.py output."""
    n = sum(1 for k in arrays if k.startswith(prefix + "w"))
    return [arrays[f"{prefix}w{i}"] for i in range(n)]


def max_rel(a_tensors, b_tensors) -> float:
    """max over tensors j of ||a_j - b_j||_inf / ||b_j||_inf: relative to each tensor's scale
    (an elementwise relative difference is meaningless for entries that cancel to ~0)."""
    worst = 0.0
    for a, b in zip(a_tensors, b_tensors, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = np.abs(b).max()
        diff = np.abs(a - b).max()
        worst = max(worst, diff / scale if scale > 0 else diff)
    return float(worst)


def record(figures: dict, key: str, value) -> None:
    """Keep a measured figure; written to $REFSIM_TFF_REPORT (JSON) if set, for the CI log."""
    figures[key] = value
    path = os.environ.get("REFSIM_TFF_REPORT")
    if path:
        pathlib.Path(path).write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
