"""The ClientApp: each SuperNode is one refsim client and runs that client's part of a round.

A node learns which client it is from its node config (``partition-id`` k, ``num-partitions``
K; ``settings.node_client``) and everything else from the run config. It reads the embedded
dataset and computes client k's indices (``settings.load_data``, ``settings.client_indices``;
the data never travels; a process does so once and keeps them), then per message:

* ``query``: answers (k, K), so the ServerApp can map refsim's client ids to Flower node ids;
* ``train``: decodes the broadcast w~_t (``decode_broadcast``) and calls refsim's
  ``client_update`` and ``report_update`` (``train_client``'s two steps: McMahan et al.,
  AISTATS 2017, arXiv:1602.05629, Algorithm 1, ClientUpdate, plus the uplink encoding keyed by
  (seed, t, k)), and replies with the encoded update and the report's numbers
  (``wire.report_content``). The local steps use the run's client optimizer
  (``client-opt``); with ``client-opt-state = "reset"`` the node builds a fresh optimizer
  state every round, with ``"keep"`` it starts from the state the server sent (a fresh one
  the first time client k trains) and returns the new state with its report;
* ``evaluate``: evaluates the raw w_{t+1} on its held-out examples (federated evaluation,
  ``eval-holdout`` > 0), or for FEMNIST by writer on the writer's own test examples
  (``settings.client_test_indices``), the numbers ``refsim.fedavg.federated_evaluate`` sums.

The handlers are pure functions of (message, node config, run config): the same inputs give the
same reply on any machine, which is what makes the deployment's result equal the in-process
loop's. A node keeps nothing between messages, so a kept optimizer state lives on the server
(``client<k>.<name>`` in the strategy's state, as in the in-process loop), not in Flower's
node ``Context.state``. That is refsim's choice: the ServerApp's checkpoint then holds it and
a resumed run, or client k on a restarted or different machine, continues bit for bit; a
node's Context.state would be lost with the node and is not checkpointed with the server.
The cost: client k's state travels with each train message and reply (2P floats each way
for Adam). A message meant for another client, or malformed content, raises ValueError (Flower then
replies with an error, and the ServerApp stops the run naming the node).
"""

from __future__ import annotations

import time

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from refsim.fedavg import (ClientHParams, client_update, decode_broadcast, decode_tensors,
                           evaluate, report_update)
from refsim.fedavg.client_opt import ClientStatePolicy, init_client_state
from refsim.flower.settings import (app_settings, client_indices, client_test_indices,
                                    load_data, node_client)
from refsim.flower.wire import (evaluate_reply_content, query_reply_content,
                                read_instruction_content, read_opt_state, report_content)

__all__ = ["app", "query", "train", "evaluate_held_out"]

app = ClientApp()


def _addressed(context: Context, msg: Message):
    """(settings, k, K, payload, t) of a train/evaluate message, checked against this node.

    A train message carries the broadcast (codec bytes with a downlink codec, else raw
    weights); an evaluate message always carries the raw w_{t+1}.
    """
    s = app_settings(context.run_config)
    k, num_clients = node_client(context.node_config)
    kind = msg.metadata.message_type
    coded = kind == "train" and s.config.downlink is not None
    what = f"{kind} message"
    payload, t, client = read_instruction_content(msg.content, coded, what)
    if client != k:
        raise ValueError(f"{what} for client {client} reached the node of client {k} "
                         f"(node {context.node_id})")
    if not 1 <= t <= s.config.rounds:
        raise ValueError(f"{what}: round {t} is outside 1..{s.config.rounds}")
    return s, k, num_clients, payload, t


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Which refsim client this node is: (k, K) from its node config (the run config is checked
    too, so that a bad override fails before round 1)."""
    app_settings(context.run_config)
    k, num_clients = node_client(context.node_config)
    return Message(query_reply_content(k, num_clients), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Client k's round t: decode w~_t, ClientUpdate (from the kept optimizer state the
    message carries, with ``keep``), reply with the encoded update (and the new state)."""
    start = time.perf_counter()
    s, k, num_clients, payload, t = _addressed(context, msg)
    cfg, model = s.config, s.model()
    data = load_data(s)
    indices, _ = client_indices(s, num_clients, k)  # (n_k,)
    w = decode_broadcast(payload, model, cfg.dtype.np)  # (P,) w~_t
    hp = ClientHParams(model, cfg.epochs, cfg.batch_size, cfg.client_lr(t), cfg.client_opt)
    keep = cfg.client_opt.state is ClientStatePolicy.KEEP
    what = f"train message of client {k}"
    if not keep and "opt-state" in msg.content:
        raise ValueError(f"{what}: carries an optimizer state, but client-opt-state is "
                         f"{cfg.client_opt.state.value!r}")
    opt_state = read_opt_state(msg.content, init_client_state(cfg.client_opt, w), what)
    trained = time.perf_counter()
    r = client_update(w, data.x_train, data.y_train, indices, hp, cfg.seed, t, k, opt_state)
    report = report_update(r, model, cfg.codec, cfg.seed, t, k)
    done = time.perf_counter()
    return Message(report_content(report, trained - start, done - trained,
                                  r.opt_state if keep else None), reply_to=msg)


@app.evaluate()
def evaluate_held_out(msg: Message, context: Context) -> Message:
    """Client k's federated evaluation of the raw w_{t+1} on its held-out examples, or on its
    own test examples where it has them (FEMNIST by writer)."""
    s, k, num_clients, payload, _ = _addressed(context, msg)
    model = s.model()
    data = load_data(s)
    own_test = client_test_indices(s, num_clients, k)  # (n_eval,) into x_test, or None
    if own_test is None:
        x, y = data.x_train, data.y_train
        _, held = client_indices(s, num_clients, k)  # (n_eval,) into x_train
    else:
        x, y, held = data.x_test, data.y_test, own_test
    params = decode_tensors(payload, model, s.config.dtype.np)  # (P,) w_{t+1}
    loss = acc = None
    if len(held):
        loss, acc = evaluate(model, params, x[held], y[held])
    return Message(evaluate_reply_content(k, int(len(held)), loss, acc), reply_to=msg)
