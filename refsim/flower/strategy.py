"""The ServerApp's strategy: Flower's FedAvg driving refsim's own server side of each round.

McMahan et al., AISTATS 2017, arXiv:1602.05629, Algorithm 1, server loop. Flower's
``Strategy.start`` runs, for t = 1..T: ``configure_train`` -> send, receive ->
``aggregate_train`` -> ``configure_evaluate`` -> send, receive -> ``aggregate_evaluate`` ->
``evaluate_fn(t)``. :class:`RefsimFedAvg` fills each step with the pieces of
``refsim.fedavg.run_round`` / ``finish_round`` (the in-process loop calls the same ones):

* ``configure_train``: S_t = ``sample_clients(seed, t, K, m)`` (refsim's rule, not Flower's
  ``sample_nodes``, which draws from Python's global ``random``), mapped to node ids through the
  partition ids the nodes reported; the broadcast ``encode_broadcast(downlink, w_t, seed, t)``;
  with ``client_opt.state`` KEEP, client k's optimizer state from the last round it trained.
* ``aggregate_train``: each reply becomes refsim's ``ClientReport`` (``wire``), in ascending
  client id; ``aggregate_round`` decodes the payloads, applies the NaN policy, takes the
  weighted mean sum(n_k delta_k) / sum(n_k) and the server optimizer step. With KEEP, each
  client's returned optimizer state (names, dtypes and shapes checked) replaces the kept one.
* ``configure_evaluate`` / ``aggregate_evaluate``: federated evaluation of w_{t+1} on every
  client's held-out examples at the evaluation cadence (with ``eval_holdout`` > 0), or on
  each client's own test set where it has one (FEMNIST by writer, ``client_test_sets``),
  summed as ``federated_evaluate`` does: ascending k, sum n_k * metric_k / sum n_k.
* ``evaluate_round`` (Flower's ``evaluate_fn``): ``finish_round``, the metrics row.

Deviation from Flower's FedAvg, stated here: ``aggregate_train`` receives no current weights in
Flower's API, so the strategy keeps the exact w_t and the server optimizer state itself
(``params``, ``state``) and ignores the ``arrays`` Flower passes back in; it returns w_{t+1} as
an ArrayRecord only for Flower's ``Result``. ``state`` is the in-process loop's run state: the
server optimizer's arrays and, with KEEP, every client's kept optimizer state under
``client<k>.<name>`` (``client_opt.join_client_states``), so a checkpoint of it is the
in-process checkpoint. The clients' states are held here by refsim's choice, not in Flower's
node ``Context.state``, which is not checkpointed with the server (``clientapp``).

Resuming (:meth:`RefsimFedAvg.restore`): after rounds 1..d of a checkpoint, Flower's loop runs
T - d rounds and Flower's round r is refsim's round t = d + r (the keys of every stream), so
Flower's log says "ROUND 1" for refsim's round d + 1.

A sampled client that does not reply, or replies with an error, stops the run (refsim has no
stragglers: the round would differ).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from refsim.backend import Purpose, make_rng
from refsim.fedavg import (FedAvgConfig, FedData, RoundMetrics, aggregate_round,
                           clients_per_round, encode_broadcast, evaluation_clients, finish_round,
                           init_server_state, sample_clients)
from refsim.fedavg.client_opt import (ClientStatePolicy, init_client_state, join_client_states,
                                      split_client_states)
from refsim.flower.wire import (instruction_content, read_evaluate_reply, read_opt_state,
                                read_report_content)
from refsim.nn import Model

__all__ = ["RefsimFedAvg"]


class RefsimFedAvg(FedAvg):
    """FedAvg whose sampling, aggregation and metrics are refsim's (see the module docstring).

    config, model : the run's FedAvgConfig and model (every process builds the same ones)
    clients : {refsim client id k: Flower node id} for k = 0..K-1
    test_data : FedData whose x_test / y_test are the test set (no training examples needed)
    client_test_sets : the clients evaluate on test sets of their own (FEMNIST by writer;
        ``refsim run``'s ``eval_partition``), so there is a federated evaluation without
        held-out examples
    on_round : called with each round's RoundMetrics once the round is complete (``params``
        and ``state`` are then w_{t+1} and its state); the ServerApp writes the checkpoint
        and the trace there, as ``run_fedavg``'s loop does after each round

    After ``start``: ``rows`` holds the RoundMetrics of every round, ``params`` w_T,
    ``initial_params`` w_0, and ``timing`` the wall time of each round and each client's
    reported setup / training seconds.
    """

    def __init__(self, config: FedAvgConfig, model: Model, clients: dict[int, int],
                 test_data: FedData, client_test_sets: bool = False,
                 on_round: Callable[[RoundMetrics], None] | None = None):
        num_clients = len(clients)
        if sorted(clients) != list(range(num_clients)):
            raise ValueError(f"clients must map every id 0..K-1 to a node, got {sorted(clients)}")
        m = clients_per_round(config.fraction, num_clients)
        fed_eval = config.eval_holdout > 0 or client_test_sets
        self.fed_eval = fed_eval
        super().__init__(fraction_train=m / num_clients, fraction_evaluate=1.0 if fed_eval else 0.0,
                         min_train_nodes=m, min_evaluate_nodes=num_clients if fed_eval else 0,
                         min_available_nodes=num_clients)
        self.config, self.model, self.clients, self.test_data = config, model, clients, test_data
        self.nodes = {node: k for k, node in clients.items()}
        if len(self.nodes) != num_clients:
            raise ValueError(f"two clients share a node: {clients}")
        self.params = model.init(make_rng(config.seed, Purpose.INIT), config.init.value,
                                 config.dtype.np)  # (P,) w_0, as run_fedavg
        self.initial_params = self.params.copy()
        self.state = init_server_state(config.server, self.params, config.aggregator)
        self.rows: list[RoundMetrics] = []
        self.timing: list[dict] = []
        self.done = 0  # rounds completed before Flower's round 1 (restore)
        self.on_round = on_round
        self._keep = config.client_opt.state is ClientStatePolicy.KEEP
        self._round: dict = {}  # what configure_train decided for the round in flight

    def restore(self, done: int, params, state: dict, rows: list[RoundMetrics]) -> None:
        """Continue after round ``done`` of a checkpoint (checked by the caller,
        ``storage.check_resumable``): w_{done+1}, its run state and the metrics rows of rounds
        1..done. Flower's loop must then run ``config.rounds - done`` rounds."""
        if len(rows) != done or not 0 <= done <= self.config.rounds:
            raise ValueError(f"restore: {len(rows)} metrics rows for round {done} of "
                             f"{self.config.rounds}")
        self.done, self.params, self.state, self.rows = done, params, dict(state), list(rows)

    def summary(self) -> None:
        """(Flower logs this at start; refsim writes the run's settings to summary.json.)"""

    def _evaluates(self, t: int) -> bool:
        """Federated evaluation in round t: held-out examples or client test sets, and
        finish_round's cadence."""
        cfg = self.config
        return self.fed_eval and (t % cfg.eval_every == 0 or t == cfg.rounds)

    def _by_client(self, replies: Iterable[Message], expected, kind: str, t: int
                   ) -> dict[int, Message]:
        """{k: reply} for exactly the clients ``expected``; errors name the client and node."""
        got: dict[int, Message] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            k = self.nodes.get(node)
            if k is None or k not in expected or k in got:
                raise ValueError(f"round {t}: unexpected {kind} reply from node {node}")
            if msg.has_error():
                raise RuntimeError(f"round {t}: client {k} (node {node}) failed in {kind}: "
                                   f"{msg.error.reason}")
            got[k] = msg
        missing = [k for k in expected if k not in got]
        if missing:
            raise TimeoutError(f"round {t}: no {kind} reply from clients {missing} (nodes "
                               f"{[self.clients[k] for k in missing]}) within the timeout")
        return got

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """S_t by refsim's rule; one ``train`` message with the broadcast to each sampled node."""
        t, cfg = self.done + server_round, self.config
        num_clients = len(self.clients)
        m = clients_per_round(cfg.fraction, num_clients)
        S_t = [int(k) for k in sample_clients(cfg.seed, t, num_clients, m)]  # ascending
        payload, copy_bits = encode_broadcast(cfg.downlink, self.model, self.params, cfg.seed, t)
        self._round = {"round": t, "clients": S_t, "sent": time.perf_counter(),
                       "facts": {"clients": tuple(S_t), "lr": cfg.client_lr(t),
                                 "broadcast_bits": m * copy_bits}}
        kept = split_client_states(self.state)[1] if self._keep else {}
        return [Message(instruction_content(payload, t, k, kept.get(k)),
                        dst_node_id=self.clients[k], message_type=MessageType.TRAIN,
                        group_id=str(t)) for k in S_t]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The replies as ClientReports (ascending k), then refsim's ``aggregate_round``."""
        t, cfg = self.done + server_round, self.config
        if self._round.get("round") != t:
            raise ValueError(f"aggregate_train for round {t} without configure_train")
        S_t = self._round["clients"]
        by_client = self._by_client(replies, S_t, "train", t)
        reports, clients_timing = [], {}
        state, kept = split_client_states(self.state)
        for k in S_t:
            content = by_client[k].content
            report, seconds = read_report_content(content, k, cfg.codec is not None)
            reports.append(report)
            clients_timing[str(k)] = seconds
            what = f"train reply of client {k}"
            if not self._keep:
                if "opt-state" in content:
                    raise ValueError(f"{what}: carries an optimizer state, but "
                                     f"client-opt-state is {cfg.client_opt.state.value!r}")
                continue
            like = init_client_state(cfg.client_opt, self.initial_params)  # names, dtypes, shapes
            kept[k] = read_opt_state(content, like, what)
            if kept[k] is None:
                raise ValueError(f"{what}: no optimizer state (client-opt-state is 'keep')")
        params, state, facts = aggregate_round(self.params, state, t, reports, cfg, self.model)
        self.params, self.state = params, join_client_states(state, kept)
        self._round["facts"].update(facts)
        self.timing.append({"round": t, "train_wall_s": time.perf_counter() - self._round["sent"],
                            "clients": clients_timing})
        return (ArrayRecord({"weights": Array(self.params)}),
                MetricRecord({"train-loss": facts["train_loss"],
                              "train-accuracy": facts["train_accuracy"]}))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """At the cadence (eval_holdout > 0): the raw w_{t+1} to the evaluating clients
        (``evaluation_clients``: all, or refsim's draw of a ``fraction_evaluate`` share)."""
        t = self.done + server_round
        self._round["fed_eval"] = (None, None)
        if not self._evaluates(t):
            return []
        S_eval = [int(k) for k in evaluation_clients(self.config, t, len(self.clients))]
        self._round["eval_clients"] = S_eval
        self._round["eval_sent"] = time.perf_counter()
        return [Message(instruction_content(self.params, t, k), dst_node_id=self.clients[k],
                        message_type=MessageType.EVALUATE, group_id=str(t)) for k in S_eval]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """sum_k n_k * metric_k / sum_k n_k over the clients with held-out examples, ascending
        k: the arithmetic of ``refsim.fedavg.federated_evaluate``."""
        t = self.done + server_round
        if not self._evaluates(t):
            return None
        S_eval = self._round["eval_clients"]
        by_client = self._by_client(replies, S_eval, "evaluate", t)
        n_total, loss_sum, acc_sum = 0, 0.0, 0.0
        for k in S_eval:
            n, loss_k, acc_k = read_evaluate_reply(by_client[k].content, k)
            if n == 0:
                continue
            n_total += n
            loss_sum += n * loss_k
            acc_sum += n * acc_k
        if n_total:
            self._round["fed_eval"] = (loss_sum / n_total, acc_sum / n_total)
        self.timing[-1]["evaluate_wall_s"] = time.perf_counter() - self._round["eval_sent"]
        return MetricRecord({"num-examples": n_total})

    def evaluate_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn``: ``finish_round`` (test metrics of w_{t+1} at the cadence,
        cumulative bits) with the federated evaluation the nodes computed. Round 0 (Flower
        evaluates the initial weights, or w_{d+1} after a restore) has no row. Then
        ``on_round``."""
        if server_round == 0:
            return None
        t = self.done + server_round
        empty = self.test_data.x_train[:0]  # the server holds no client data
        row = finish_round(t, self.params, self._round["facts"],
                           self.rows[-1] if self.rows else None, self.config, self.model,
                           self.test_data, empty, self.test_data.y_train[:0], [])
        fed_loss, fed_acc = self._round["fed_eval"]
        row = dataclasses.replace(row, fed_eval_loss=fed_loss, fed_eval_accuracy=fed_acc)
        self.rows.append(row)
        if self.on_round is not None:
            self.on_round(row)
        tested = {k: v for k, v in (("test-loss", row.test_loss),
                                    ("test-accuracy", row.test_accuracy)) if v is not None}
        return MetricRecord(tested) if tested else None
