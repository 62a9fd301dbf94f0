"""One run per run directory: the lock file ``run.lock`` a run holds while it writes there.

Two runs writing checkpoints, traces and metrics into one directory would interleave their
files, and a resumed run would continue from whichever checkpoint was written last. So a run
holds an exclusive lock on ``<run_dir>/run.lock`` for as long as it writes, and a second run
on that directory stops at once with one line naming the first (:class:`RunDirBusy`).

How the lock works (POSIX): the file is opened with ``O_CREAT`` and locked with
``fcntl.flock(LOCK_EX | LOCK_NB)``. The lock belongs to the kernel, not to the file: it is
released when the holder closes the file or dies, ``kill -9`` included, so a lock left by a
killed run is free the moment that run is gone, and taking it over is one atomic ``flock``
call. The file's content, one JSON line ``{"pid": ..., "host": ..., "started": ...}``, only
says who holds it, for the message and for :func:`lock_run_dir`'s report of a lock taken
over. Why not ``O_CREAT | O_EXCL`` alone (the file's existence as the lock): a run killed
with ``kill -9`` leaves the file behind, and telling a stale file from a live run then needs
a guess from the recorded PID, which fails when the PID has been reused (a container restart
gives the same small PIDs again) or was recorded on another host; and two runs taking over
the same stale file at once must not both succeed, which needs a second lock anyway.

On release the holder deletes the file while still holding the lock, so a run that opened
the old file just before checks, once locked, that the name still refers to the file it
locked, and opens it anew otherwise. Limits: ``flock`` locks are shared with child processes
forked by the holder (they hold the lock until they exit, as part of the run); over NFS they
work where the server supports locks (Linux maps ``flock`` to NFS byte-range locks); on a
platform without ``fcntl`` (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import NamedTuple

try:
    import fcntl
except ImportError:  # Windows: see the module docstring
    fcntl = None

__all__ = ["LOCK_FILE", "LockHolder", "RunLockError", "RunDirBusy", "lock_run_dir"]

LOCK_FILE = "run.lock"


class LockHolder(NamedTuple):
    """Who holds (or held) a run directory's lock: process id, host name, start time (UTC)."""
    pid: int
    host: str
    started: str

    def __str__(self) -> str:
        return f"PID {self.pid} on host {self.host}, started {self.started}"


class RunLockError(ValueError):
    """The lock of a run directory cannot be taken (the message says why)."""


class RunDirBusy(RunLockError):
    """Another run holds the lock of the run directory; ``holder`` says which (None when it
    has not written its record yet)."""

    def __init__(self, directory: str, holder: LockHolder | None):
        who = f"({holder})" if holder else "(its PID is not recorded yet)"
        super().__init__(f"{directory} is in use by another refsim run {who}; wait for it to "
                         f"finish, or choose another run directory")
        self.holder = holder


def _holder(fd: int) -> LockHolder | None:
    """The record in an open lock file; None when it is empty or unreadable."""
    try:
        record = json.loads(os.pread(fd, 4096, 0))
        return LockHolder(int(record["pid"]), str(record["host"]), str(record["started"]))
    except (ValueError, KeyError, TypeError, OSError):
        return None


def _alive(holder: LockHolder) -> bool:
    """Whether ``holder`` may be running: another host's, or a live PID on this one."""
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _current_holder(fd: int, wait_s: float = 0.5) -> LockHolder | None:
    """The record of the process that holds the lock now. It writes its record just after
    taking the lock, so for up to ``wait_s`` an empty record or the one of the dead run it
    took the lock over from is waited out (for the message only; the lock itself is the
    kernel's)."""
    deadline = time.monotonic() + wait_s
    while True:
        holder = _holder(fd)
        if (holder is not None and _alive(holder)) or time.monotonic() > deadline:
            return holder
        time.sleep(0.01)


def _open_locked(path: str, directory: str) -> int:
    """An fd of ``path`` holding its flock (retried while its holder deletes it); RunDirBusy
    when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _current_holder(fd)
            os.close(fd)
            raise RunDirBusy(directory, holder) from None
        except OSError as err:
            os.close(fd)
            raise RunLockError(f"{path}: the file system does not support file locks "
                             f"({os.strerror(err.errno)}); choose a run directory on a local "
                             f"disk") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder deleted the file between our open and our flock: again


@contextlib.contextmanager
def lock_run_dir(directory: str | os.PathLike) -> Iterator[LockHolder | None]:
    """Hold the lock of run directory ``directory`` (created if needed) for the ``with``
    block; yields the holder recorded in a lock file left by a run that died without
    releasing it (the lock taken over), else None.

    Raises RunDirBusy naming the holder's PID and host when another process holds the lock,
    and RunLockError when the lock file cannot be created or locked (both ValueErrors).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with lock_run_dir(d) as stale:
    ...         print(stale, os.listdir(d))
    ...     print(os.listdir(d))
    None ['run.lock']
    []
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, LOCK_FILE)
    try:
        os.makedirs(directory, exist_ok=True)
        fd = None if fcntl is None else _open_locked(path, directory)
    except OSError as err:
        raise RunLockError(f"{path}: cannot create the run directory's lock file "
                           f"({err.strerror})") from None
    if fd is None:  # no fcntl: see the module docstring
        yield None
        return
    try:
        stale = _holder(fd)
        mine = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
        yield stale
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # still locked: see the module docstring
        os.close(fd)
