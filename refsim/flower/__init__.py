"""refsim as a Flower app: the same FedAvg rounds on Flower's deployment runtime.

FederatedAveraging (McMahan et al., AISTATS 2017, arXiv:1602.05629, Algorithm 1) as
``refsim.fedavg.run_fedavg`` runs it in one process, split over Flower's processes (a SuperLink,
one SuperNode per client, the ServerApp and a ClientApp per message; ``docs/scale-out.md``).
Each step of the in-process round is the same refsim function, called on another machine:

=============================================  =================================================
in process (``refsim.fedavg.loop``)            Flower app
=============================================  =================================================
K = len(partition)                             K = ``num-partitions`` of the SuperNodes' node
                                               config
client k                                       the SuperNode with ``partition-id`` = k
                                               (``serverapp.discover_clients``: one ``query``)
the partition of the data                      recomputed on each node from the seed
                                               (``settings.client_indices``; no data travels)
w_0 = ``model.init(make_rng(seed, INIT))``     the same, in the strategy
S_t = ``sample_clients(seed, t, K, m)``        ``RefsimFedAvg.configure_train`` (not Flower's
                                               ``sample_nodes``): a ``train`` message per k
``encode_broadcast`` / ``decode_broadcast``    ServerApp / ClientApp; an ArrayRecord
``train_client`` (ClientUpdate, encoding)      ClientApp ``train``; the update is an Array
                                               tagged ``refsim/codec-v1`` (or raw floats)
``aggregate_round``                            ``RefsimFedAvg.aggregate_train``
federated evaluation (held-out examples)       ClientApp ``evaluate``, ``aggregate_evaluate``
``finish_round``: the metrics row              ``RefsimFedAvg.evaluate_round`` (evaluate_fn)
metrics.csv, summary.json of ``refsim run``    written by the ServerApp in ``out-dir``
client optimizer, ``client_opt.state`` RESET   the ClientApp's local steps, a fresh state each
                                               round
KEEP: ``client<k>.<name>`` in the run state    held by the strategy (not Flower's node
                                               ``Context.state``), sent with k's train message,
                                               returned with the reply
checkpoint.npz, ``resume``, ``trace/``         the ServerApp in ``out-dir``, with the loop's
                                               functions and its run-directory lock
=============================================  =================================================

Every client's report is a pure function of (seed, t, k) and the broadcast, and the server sums
in ascending client id, so a deployment run gives the in-process run's weights and metrics bit
for bit (``tests/test_flower_deployment.py``). Modules: ``settings`` (run and node config,
no flwr), ``wire`` (the message records), ``clientapp``, ``strategy``, ``serverapp``.

Importing this package needs ``flwr`` (``pip install 'refsim[flower]'``); the rest of refsim
never imports it.
"""

try:
    import flwr  # noqa: F401  (the clear message below instead of a deep ImportError)
except ImportError as e:  # pragma: no cover - exercised without the extra
    raise ImportError("refsim.flower needs Flower: pip install 'refsim[flower]' "
                      "(flwr>=1.41,<1.43)") from e

from refsim.flower import clientapp, serverapp

client_app = clientapp.app
server_app = serverapp.app

__all__ = ["client_app", "server_app"]
