"""A Flower deployment on this machine: a SuperLink and N SuperNodes on 127.0.0.1 (insecure),
started with the commands ``refsim flower-app`` prints (``refsim.cli.flower_app``), and the
refsim app run on it with ``flwr run``.

Used by ``tests/test_flower_deployment.py`` and ``bench/flower_overhead.py``. Rules it keeps:
every process listens on 127.0.0.1 only (free ports asked from the OS); ``FLWR_HOME`` is a
private folder (the SuperLink connection, the installed app); telemetry and the update check are
off; the result is read from the files the ServerApp writes, never from ``flwr run``'s exit code
(``flwr run`` returns once the run is *submitted*); and :meth:`LocalDeployment.stop` ends every
process it started, and what those started, by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from refsim.cli.flower_app import (app_dir, connection_toml, flwr_run_command, superlink_command,
                                   supernode_command)

BIN = os.path.dirname(sys.executable)  # flower-superlink, flower-supernode, flwr live here


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_table(values: dict) -> str:
    """Flat scalars as TOML (JSON strings are valid TOML basic strings)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, str) else repr(v)
    return "".join(f"{k} = {value(v)}\n" for k, v in values.items())


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc; [] elsewhere)."""
    out = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # field 4, after "(comm) state"
        if ppid == pid:
            out.append(int(entry))
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _socket_inodes(pid: int) -> set[int]:
    """The socket inodes among the open files of ``pid``."""
    found = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def _address(hex_addr: str) -> str:
    """/proc/net/tcp's hex address as text: 127.0.0.1, ::, ::ffff:127.0.0.1."""
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # 4 little-endian words
    return socket.inet_ntop(socket.AF_INET6, words)


def listening_sockets(pids) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket in LISTEN state held by ``pids`` (Linux /proc).

    >>> import socket as s
    >>> with s.socket() as srv:
    ...     srv.bind(("127.0.0.1", 0)); srv.listen()
    ...     [a for a, _, _ in listening_sockets([os.getpid()])]
    ['127.0.0.1']
    """
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == "0A" and inode in owner:  # 0A: TCP_LISTEN
                addr, port = local.split(":")
                found.append((_address(addr), int(port, 16), owner[inode]))
    return found


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or IPv4 loopback mapped into IPv6."""
    return address.startswith("127.") or address in ("::1",) or address.startswith("::ffff:127.")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has exited
    except OSError:
        return False


class LocalDeployment:
    """``with LocalDeployment(workdir, nodes) as d: d.submit({...}); out = d.wait()``."""

    def __init__(self, workdir: str, nodes: int, poll_interval: float = 0.2):
        self.workdir, self.nodes = str(workdir), nodes
        self.home = os.path.join(self.workdir, "flwr_home")
        self.port = free_port()
        # SuperExec picks up tasks every second by default; a shorter poll only saves waiting.
        self.env = dict(os.environ, FLWR_HOME=self.home, FLWR_TELEMETRY_ENABLED="0",
                        FLWR_DISABLE_UPDATE_CHECK="1",
                        FLWR_SUPEREXEC_TASK_POLL_INTERVAL=str(poll_interval),
                        PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
        for legacy in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"):
            self.env.pop(legacy, None)  # the old gRPC APIs would listen on 0.0.0.0 ports
        self.procs: list[subprocess.Popen] = []
        self.logs: list[str] = []
        self.timing: dict[str, float] = {}

    def _start(self, argv: list[str], name: str) -> None:
        exe = os.path.join(BIN, argv[0])
        if not os.path.exists(exe):
            raise FileNotFoundError(f"{exe} not found: is flwr installed in this environment?")
        log = os.path.join(self.workdir, f"{name}.log")
        self.logs.append(log)
        with open(log, "w") as f:
            self.procs.append(subprocess.Popen([exe, *argv[1:]], stdout=f,
                                               stderr=subprocess.STDOUT, env=self.env,
                                               cwd=self.workdir))

    def start(self, timeout: float = 60.0) -> None:
        """The SuperLink and the SuperNodes, all at once (the SuperNodes retry until the
        SuperLink is up); returns when the SuperLink accepts connections."""
        t0 = time.perf_counter()
        os.makedirs(self.home, exist_ok=True)
        with open(os.path.join(self.home, "config.toml"), "w") as f:
            f.write(connection_toml(f"127.0.0.1:{self.port}"))
        self._start(superlink_command("127.0.0.1", self.port), "superlink")
        for k in range(self.nodes):
            self._start(supernode_command(f"127.0.0.1:{self.port}", k, self.nodes, free_port()),
                        f"supernode{k}")
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.procs[0].poll() is not None or time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the SuperLink did not start:\n{self.tail('superlink')}")
            time.sleep(0.05)
        self.timing["superlink_up_s"] = time.perf_counter() - t0

    def submit(self, run_config: dict, timeout: float = 60.0) -> None:
        """``flwr run`` the refsim app with ``run_config`` overrides (must include ``out-dir``).
        It returns once the SuperLink has the run; :meth:`wait` reads the result."""
        self.out = run_config["out-dir"]
        overrides = os.path.join(self.workdir, "run_config.toml")
        with open(overrides, "w") as f:
            f.write(toml_table(run_config))
        self._submitted_at = time.perf_counter()
        argv = flwr_run_command(app_dir(), overrides)
        self._submitted = subprocess.run([os.path.join(BIN, argv[0]), *argv[1:]], env=self.env,
                                         cwd=self.workdir, capture_output=True, text=True,
                                         timeout=timeout)
        self.timing["flwr_run_s"] = time.perf_counter() - self._submitted_at

    def wait(self, timeout: float = 120.0) -> str:
        """The out-dir once ``summary.json`` is there; RuntimeError with ``error.txt`` when the
        ServerApp failed, TimeoutError after ``timeout`` s (from :meth:`submit`)."""
        summary, error = (os.path.join(self.out, "summary.json"),
                          os.path.join(self.out, "error.txt"))
        while not os.path.exists(summary):
            if os.path.exists(error):
                with open(error) as f:
                    raise RuntimeError(f"the ServerApp failed:\n{f.read()}")
            if time.perf_counter() - self._submitted_at > timeout:
                raise TimeoutError(f"no result after {timeout} s. flwr run said:\n"
                                   f"{self._submitted.stdout}{self._submitted.stderr}\n"
                                   f"{self.tail('superlink')}")
            time.sleep(0.1)
        self.timing["run_s"] = time.perf_counter() - self._submitted_at
        return self.out

    def tail(self, name: str, lines: int = 30) -> str:
        path = os.path.join(self.workdir, f"{name}.log")
        if not os.path.exists(path):
            return f"({name}.log missing)"
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every process started here and every process they started (SuperExec,
        ServerApp, ClientApps), by PID; SIGKILL whatever is left after ``grace`` seconds."""
        pids = []
        for p in self.procs:
            pids += [p.pid, *_descendants(p.pid)]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in pids:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> "LocalDeployment":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
