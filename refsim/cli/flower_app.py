"""``refsim flower-app``: where refsim's Flower app is, and the exact commands that run it.

Prints the app folder (``refsim/flower_app``, shipped with refsim) and, for a SuperLink and N
SuperNodes, every command in order: what to install, the SuperLink, one SuperNode per client
(node config ``partition-id=k num-partitions=N``), the SuperLink connection for ``flwr`` and
``flwr run``. Defaults are one machine (everything on 127.0.0.1, no TLS); ``--superlink-host``
names the SuperLink's machine for several machines and ``--tls-dir`` switches to TLS.
``docs/scale-out.md`` explains each line. The command builders are plain functions returning
argument lists, so ``tests/test_flower_deployment.py`` runs exactly these commands.

This module does not import ``flwr`` (``refsim flower-app`` works without the extra and says
how to install it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import sys
from importlib import resources

__all__ = ["app_dir", "superlink_command", "supernode_command", "connection_toml",
           "flwr_run_command", "flower_app", "add_subcommand"]

CONNECTION = "refsim"  # the name of the SuperLink connection in $FLWR_HOME/config.toml


def app_dir() -> str:
    """The folder of the Flower app (its ``pyproject.toml`` names ``refsim.flower``)."""
    return str(resources.files("refsim") / "flower_app")


def _tls(tls_dir: str | None) -> dict[str, str] | None:
    """The three files of ``--tls-dir``: ca.crt, server.pem, server.key."""
    if tls_dir is None:
        return None
    return {name: os.path.join(tls_dir, name) for name in ("ca.crt", "server.pem", "server.key")}


def superlink_command(bind_host: str, port: int, tls_dir: str | None = None) -> list[str]:
    """The SuperLink: Fleet, Control and Runtime APIs on one HTTP port; the ServerApp runs in a
    subprocess; refsim is installed, so Flower must not install the app's dependencies."""
    cmd = ["flower-superlink", "--host", bind_host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    tls = _tls(tls_dir)
    if tls is None:
        return cmd + ["--insecure"]
    return cmd + ["--ssl-ca-certfile", tls["ca.crt"], "--ssl-certfile", tls["server.pem"],
                  "--ssl-keyfile", tls["server.key"]]


def supernode_command(superlink: str, client: int, num_clients: int, runtime_port: int,
                      tls_dir: str | None = None) -> list[str]:
    """SuperNode of refsim client k: connects to ``superlink`` (host:port); its own Runtime API
    (for the ClientApp processes it starts) stays on 127.0.0.1:``runtime_port``."""
    cmd = ["flower-supernode", "--superlink", superlink, "--host", "127.0.0.1",
           "--port", str(runtime_port),
           "--node-config", f"partition-id={client} num-partitions={num_clients}"]
    tls = _tls(tls_dir)
    return cmd + (["--insecure"] if tls is None else ["--root-certificates", tls["ca.crt"]])


def connection_toml(address: str, tls_dir: str | None = None, name: str = CONNECTION) -> str:
    """The ``[superlink.<name>]`` table ``flwr run`` reads from ``$FLWR_HOME/config.toml``."""
    tls = _tls(tls_dir)
    security = ("insecure = true" if tls is None
                else f'root-certificates = "{os.path.abspath(tls["ca.crt"])}"')
    return f'[superlink.{name}]\naddress = "{address}"\n{security}\n'


def flwr_run_command(app: str, run_config: str | None = None, name: str = CONNECTION
                     ) -> list[str]:
    """``flwr run APP CONNECTION [--run-config '...']`` (it returns once the run is started)."""
    cmd = ["flwr", "run", app, name]
    return cmd + (["--run-config", run_config] if run_config else [])


def _has_flwr() -> bool:
    """Whether flwr can be imported here, without importing it."""
    try:
        return importlib.util.find_spec("flwr") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["flwr"] is None
        return False


def _line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def flower_app(args: argparse.Namespace) -> int:
    """Print the app folder and the commands (see the module docstring)."""
    if args.nodes < 1:
        print(f"refsim flower-app: error: --nodes must be >= 1, got {args.nodes}", file=sys.stderr)
        return 2
    app = app_dir()
    host, port, tls = args.superlink_host, args.port, args.tls_dir
    local = host in ("127.0.0.1", "localhost")
    address = f"{host}:{port}"
    flwr_home = os.environ.get("FLWR_HOME") or os.path.join("~", ".flwr")
    out_dir = os.path.abspath(os.path.join("runs", "flower"))
    lines = [f"Flower app folder: {app}", ""]
    if not _has_flwr():
        lines += ["(flwr is not installed here: step 0 installs it.)", ""]
    lines += [
        "# 0. On every machine: refsim with the Flower extra (flwr>=1.41,<1.43).",
        "pip install 'refsim[flower]'", "",
        f"# 1. The SuperLink ({'this machine' if local else host}); keep it running.",
        _line(superlink_command("127.0.0.1" if local else "0.0.0.0", port, tls)), "",
        f"# 2. One SuperNode per client k = 0..{args.nodes - 1}"
        f"{'' if local else ' (on the client machines)'}; keep them running.",
    ]
    for k in range(args.nodes):
        lines.append(_line(supernode_command(address, k, args.nodes, args.node_port + k, tls)))
    lines += [
        "", f"# 3. Tell flwr where the SuperLink is: add to {flwr_home}/config.toml",
        *connection_toml(address, tls).splitlines(), "",
        "# 4. Run the app (returns at once); the ServerApp writes metrics.csv, summary.json",
        "#    (or error.txt) to out-dir. Any key of the app's [tool.flwr.app.config] can be set.",
        _line(flwr_run_command(app, f'out-dir="{out_dir}" rounds=50')),
    ]
    print("\n".join(lines))
    return 0


def add_subcommand(subparsers) -> None:
    """Register ``refsim flower-app``."""
    sub = subparsers.add_parser("flower-app", help="the Flower app folder and the commands to "
                                                   "run it on a SuperLink and N SuperNodes")
    sub.add_argument("--nodes", type=int, default=3, help="N SuperNodes = K clients (default 3)")
    sub.add_argument("--superlink-host", default="127.0.0.1",
                     help="the SuperLink's host name or IP as the SuperNodes reach it "
                          "(default 127.0.0.1: one machine)")
    sub.add_argument("--port", type=int, default=9093, help="the SuperLink's port (default 9093)")
    sub.add_argument("--node-port", type=int, default=9094,
                     help="Runtime API port of SuperNode 0 (k uses node-port + k; default 9094)")
    sub.add_argument("--tls-dir", default=None,
                     help="folder with ca.crt, server.pem, server.key: TLS instead of --insecure")
    sub.set_defaults(func=flower_app)
