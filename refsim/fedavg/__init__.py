"""refsim.fedavg: FederatedAveraging (McMahan et al., AISTATS 2017, arXiv:1602.05629,
Algorithm 1) as a readable loop. Read ``loop.py`` first; semantics in ``docs/fedavg.md``."""

from refsim.fedavg.client import (ClientHParams, ClientReport, ClientResult, NonFiniteUpdateError,
                                  client_update, report_update, train_client)
from refsim.fedavg.config import (DType, FedAvgConfig, InitScheme, NanPolicy, ServerOpt,
                                  ServerOptConfig, ServerSemantics, Weighting, clients_per_round)
from refsim.fedavg.dataset import FedData, from_images, holdout_split
from refsim.fedavg.loop import (evaluation_clients, finish_round, run_fedavg, run_round,
                                sample_clients)
from refsim.fedavg.metrics import (History, RoundMetrics, evaluate, federated_evaluate,
                                   metrics_csv, metrics_jsonl, rounds_to_targets)
from refsim.fedavg.robust import AdaptiveNorm, RobustAggregator
from refsim.fedavg.server import (aggregate_round, init_server_state, server_update,
                                  weighted_average)
from refsim.fedavg.stacked import client_updates, stacked_client_update
from refsim.fedavg.transport import (decode_broadcast, decode_tensors, encode_broadcast,
                                     encode_tensors, encode_update)

__all__ = [
    "FedAvgConfig", "ServerOptConfig", "ServerOpt", "ServerSemantics", "Weighting", "NanPolicy",
    "DType", "InitScheme", "clients_per_round", "RobustAggregator", "AdaptiveNorm",
    "ClientHParams", "ClientResult", "ClientReport", "NonFiniteUpdateError", "client_update",
    "train_client", "report_update", "client_updates", "stacked_client_update",
    "weighted_average", "init_server_state", "server_update", "aggregate_round",
    "encode_tensors", "decode_tensors", "encode_update", "encode_broadcast", "decode_broadcast",
    "FedData", "from_images", "holdout_split",
    "sample_clients", "evaluation_clients", "run_round", "finish_round", "run_fedavg",
    "History", "RoundMetrics", "evaluate", "federated_evaluate", "metrics_csv", "metrics_jsonl",
    "rounds_to_targets",
]
