"""refsim's ServerApp and ClientApp on Flower's Simulation Engine (``refsim run --engine
flower-sim``): K virtual SuperNodes in one machine (or a Ray cluster), Ray actors running the
ClientApp.

The apps are those of the deployment runtime (``refsim.flower.serverapp``,
``refsim.flower.clientapp``; FedAvg of McMahan et al., AISTATS 2017, arXiv:1602.05629,
Algorithm 1). Two things differ from a deployment, and this module supplies them:

* **The run config.** ``flwr.simulation.run_simulation`` gives every Context an empty run
  config, so :func:`sim_apps` wraps the handlers: each gets a copy of its Context with the run's
  config, before calling the deployment handler. The node config (``partition-id`` k,
  ``num-partitions`` K) is the Simulation Engine's own, as the deployment's SuperNodes get it.
* **The backend.** :func:`backend_config`: each ClientApp actor gets ``client_cpus`` CPUs
  (Flower's ``client_resources``), so floor(cores / client_cpus) sampled clients train at once;
  Ray is started on 127.0.0.1 with no dashboard and a small object store, or joins the cluster
  at ``ray_address`` (Flower's ``init_args``; ``docs/scale-out.md``). A local Ray listens on
  loopback only when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before Ray is imported
  (``refsim.cli.run_flower_sim.LOOPBACK_ENV``, set in the child process): Ray 2.55 otherwise
  replaces the node IP 127.0.0.1 with the machine's address and binds its gRPC servers to every
  interface.

Every client's report is a pure function of (seed, t, k) and the broadcast, and the server
sums in ascending client id whatever order the replies arrive in, so the result equals the
in-process ``run_fedavg`` bit for bit, at any concurrency (``tests/test_flower_simulation.py``).

Run as ``python -m refsim.flower.simulation REQUEST.json`` (what ``refsim run --engine
flower-sim`` does, in a child process, so that Ray and its processes end with it): exit 0, 2
when the request asks for something the app cannot do (one line on stderr), 1 when the run
failed.
"""

from __future__ import annotations

import json
import os
import sys

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from refsim.flower import clientapp, serverapp
from refsim.flower.settings import RUN_CONFIG, app_settings

__all__ = ["sim_apps", "backend_config", "check_request", "simulate", "main"]

OBJECT_STORE_BYTES = 100 * 2**20  # Ray's minimum is ~75 MiB; the apps put nothing in it


def _with_config(context: Context, run_config: dict) -> Context:
    """A copy of ``context`` with ``run_config`` (Flower refuses a changed Context)."""
    return Context(run_id=context.run_id, node_id=context.node_id,
                   node_config=context.node_config, state=context.state,
                   run_config=dict(run_config))


def sim_apps(run_config: dict) -> tuple[ServerApp, ClientApp]:
    """(ServerApp, ClientApp): the deployment's handlers, each given ``run_config``."""
    rc = {**RUN_CONFIG, **run_config}
    app_settings(rc)  # ValueError naming the key, before any actor starts
    server, client = ServerApp(), ClientApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        serverapp.main(grid, _with_config(context, rc))

    @client.query()
    def _query(msg: Message, context: Context) -> Message:
        return clientapp.query(msg, _with_config(context, rc))

    @client.train()
    def _train(msg: Message, context: Context) -> Message:
        return clientapp.train(msg, _with_config(context, rc))

    @client.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return clientapp.evaluate_held_out(msg, _with_config(context, rc))

    return server, client


def backend_config(client_cpus: float, ray_address: str | None, num_cpus: int | None) -> dict:
    """Flower's backend_config: ``client_resources`` and Ray's ``init_args``.

    >>> backend_config(1.0, None, 2)["init_args"]["_node_ip_address"]
    '127.0.0.1'
    >>> backend_config(2.0, "127.0.0.1:6379", None)["init_args"]
    {'address': '127.0.0.1:6379'}
    """
    if not client_cpus > 0:
        raise ValueError(f"--client-cpus must be > 0, got {client_cpus!r}")
    if ray_address:
        init = {"address": ray_address}  # the cluster's own settings apply
    else:
        # address "local": a new local Ray, never a cluster that /tmp/ray/ray_current_cluster
        # names (a `ray start` left there would be joined, and num_cpus refused)
        init = {"address": "local", "_node_ip_address": "127.0.0.1", "include_dashboard": False,
                "object_store_memory": OBJECT_STORE_BYTES}
        if num_cpus is not None:
            init["num_cpus"] = num_cpus
    return {"client_resources": {"num_cpus": client_cpus, "num_gpus": 0.0}, "init_args": init}


def check_request(run_config: dict, expected: dict) -> None:
    """ValueError unless the app's FedAvgConfig is ``expected`` (``FedAvgConfig.to_dict()``
    of the run ``refsim run`` would make): a setting the app cannot carry is refused, never
    dropped."""
    got = app_settings({**RUN_CONFIG, **run_config}).config.to_dict()
    diff = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    if diff:
        raise ValueError("the Flower app cannot run this config: "
                         + ", ".join(f"{k} = {expected.get(k)!r} (app: {got.get(k)!r})"
                                     for k in diff))


def simulate(run_config: dict, num_clients: int, client_cpus: float = 1.0,
             ray_address: str | None = None, num_cpus: int | None = None) -> str:
    """Run the app on the Simulation Engine with K = ``num_clients`` virtual SuperNodes; returns
    the out-dir, where the ServerApp wrote the run files (RuntimeError with error.txt's last
    line if it failed)."""
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    server, client = sim_apps(run_config)
    out = run_config["out-dir"]
    run_simulation(server_app=server, client_app=client, num_supernodes=num_clients,
                   backend_config=backend_config(client_cpus, ray_address, num_cpus))
    if not os.path.exists(os.path.join(out, "summary.json")):
        err = os.path.join(out, "error.txt")
        last = "no summary.json and no error.txt"
        if os.path.exists(err):
            with open(err) as f:
                last = f.read().strip().splitlines()[-1]
        raise RuntimeError(f"the simulation did not finish: {last}")
    return out


def _one_line(e: BaseException) -> str:
    """The first line of an error (Ray's errors run over many lines)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def main(argv: list[str]) -> int:
    """``python -m refsim.flower.simulation REQUEST.json`` (see the module docstring)."""
    with open(argv[0]) as f:
        req = json.load(f)
    try:
        check_request(req["run_config"], req["expected"])
        backend_config(req["client_cpus"], req["ray_address"], req["num_cpus"])
    except ValueError as e:
        print(f"refsim run: error: --engine flower-sim: {e}", file=sys.stderr)
        return 2
    try:
        simulate(req["run_config"], req["num_clients"], req["client_cpus"],
                 req["ray_address"], req["num_cpus"])
    except Exception as e:  # the ServerApp's error (a NaN update, a dead client), one line
        err = os.path.join(req["run_config"]["out-dir"], "error.txt")
        where = f" (traceback: {err})" if os.path.exists(err) else ""
        print(f"refsim run: error: --engine flower-sim: {_one_line(e)}{where}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
