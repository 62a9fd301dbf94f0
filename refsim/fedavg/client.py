"""ClientUpdate of FederatedAveraging: E epochs of minibatch SGD from the broadcast weights.

McMahan et al., AISTATS 2017, arXiv:1602.05629, Algorithm 1, ClientUpdate(k, w):

    B <- (split P_k into batches of size B)
    for each local epoch i from 1 to E:
        for batch b in B:
            w <- w - eta * grad l(w; b)
    return w to server

refsim returns the *update* delta_k = w_k - w (not w_k itself) together with n_k = |P_k|, so
that the server can compress and average updates; w + weighted_mean(delta) equals the paper's
weighted mean of the w_k exactly in real arithmetic. The batches come from
``refsim.data.batching.client_batches`` keyed by (seed, round, client, epoch): epoch e of round t
visits ``indices[make_rng(seed, Purpose.BATCH_ORDER, t, k, e).permutation(n_k)]`` in slices of B
(the last, partial batch kept).

Training metrics are accumulated during the local steps, as TFF's ``build_weighted_fed_avg``
reports them: each minibatch b contributes |b| * (its mean loss) and its number of correct
argmax predictions, both computed by the forward pass *before* that batch's step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from refsim.backend import get_xp
from refsim.compress import Codec
from refsim.data.batching import batch_order, batch_slices
from refsim.fedavg.client_opt import ClientOptConfig, client_opt_step, init_client_state
from refsim.fedavg.transport import encode_update
from refsim.nn import Model
from refsim.nn.loss import check_labels

__all__ = ["ClientHParams", "ClientResult", "ClientReport", "NonFiniteUpdateError",
           "client_update", "train_client", "report_update", "check_client_data"]


@dataclass(frozen=True)
class ClientHParams:
    """What a client needs to train: its model, E, B (None = whole client), eta, and the
    optimizer of its local steps (``client_opt``; plain SGD, the paper's, by default)."""
    model: Model
    epochs: int
    batch_size: int | None
    lr: float
    opt: ClientOptConfig = ClientOptConfig()


class NonFiniteUpdateError(ValueError):
    """A client's update contains NaN or Inf (``NanPolicy.RAISE``)."""


class ClientResult(NamedTuple):
    """What ClientUpdate(k, w) computes.

    delta        (P,) w_k - w, dtype of w
    num_examples n_k = |P_k| (the weight under ``Weighting.EXAMPLES``)
    num_batches  E * ceil(n_k / B) local steps taken
    loss_sum     sum over the local minibatches of |b| * mean loss (float64)
    num_correct  correct argmax predictions over the same minibatches
    num_seen     sum of |b| = E * n_k
    opt_state    the client optimizer's state after the last step ({} for SGD)
    """
    delta: np.ndarray
    num_examples: int
    num_batches: int
    loss_sum: float
    num_correct: int
    num_seen: int
    opt_state: dict = {}


def client_update(params: np.ndarray, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
                  hparams: ClientHParams, seed: int, round: int, client: int,
                  opt_state: dict | None = None) -> ClientResult:
    """Run ClientUpdate(k, w) and return its :class:`ClientResult`.

    Parameters
    ----------
    params : ndarray, shape (P,)   the broadcast global weights w_t (not modified)
    x : ndarray, shape (N, C, H, W), same dtype as params   the whole training set
    y : ndarray, shape (N,) int   its labels
    indices : ndarray, shape (n_k,) int   client k's examples (rows of x)
    hparams : ClientHParams
    seed, round, client : int   keys of the batch order (round is the 1-based round t)
    opt_state : the client optimizer's state to start from (``ClientStatePolicy.KEEP``), or
        None for a fresh one (``client_opt.init_client_state``)

    The client's images and labels are checked once (:func:`check_client_data`), not at
    every step. The batches are those of ``client_batches``: the order (E, n_k) is drawn on the
    host and, on a GPU, copied to the device once; each step gathers its batch there and the
    metric sums stay there until the end, so no step waits for the device.
    """
    xp = get_xp(params)
    check_client_data(hparams.model, x, y, indices)
    order = xp.asarray(batch_order(indices, hparams.epochs, seed, round, client))  # (E, n_k)
    w = params.copy()  # (P,)
    state = init_client_state(hparams.opt, params) if opt_state is None else opt_state
    loss_sum, correct, seen, steps = 0.0, 0, 0, 0  # device scalars on a GPU
    for epoch_order in order:  # w <- w - eta * g with plain SGD (``client_opt``: the others)
        for start, stop in batch_slices(order.shape[1], hparams.batch_size):
            rows = epoch_order[start:stop]  # (b,) this batch's examples
            yb = y[rows]
            loss, grad, logits = hparams.model.loss_grad_and_logits(w, x[rows], yb,
                                                                    check_values=False)
            # (P,); plain SGD in place (out=w: the client owns w), as PyTorch's step
            w, state = client_opt_step(hparams.opt, w, grad, hparams.lr, state, out=w)
            loss_sum += (stop - start) * loss
            correct += (logits.argmax(axis=1) == yb).sum()
            seen += stop - start
            steps += 1
    return ClientResult(w - params, int(len(indices)), steps, float(loss_sum), int(correct), seen,
                        state)


def check_client_data(model: Model, x, y, indices) -> None:
    """Once per client, what the model would check at every step: finite images, labels in
    [0, K) (ValueError naming the problem)."""
    xp = get_xp(x)
    rows = xp.asarray(indices)
    if len(indices) and not bool(xp.isfinite(x[rows]).all()):
        raise ValueError("the client's training images contain NaN or Inf")
    check_labels(y[rows], len(indices), model.num_classes)


@dataclass(frozen=True)
class ClientReport:
    """What client k sends the server after round t (``train_client``).

    payload is the encoded update (``transport.encode_update``: codec bytes, or the raw delta
    without a codec), or None when the update had a NaN or Inf entry (nothing was encoded;
    the server applies the run's ``NanPolicy``). uplink_bits and entropy_bits are 0 / None then.
    The other fields are those of :class:`ClientResult`.
    """
    client: int
    num_examples: int
    num_batches: int
    loss_sum: float
    num_correct: int
    num_seen: int
    payload: bytes | np.ndarray | None
    uplink_bits: int
    entropy_bits: float | None


def train_client(client_params: np.ndarray, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
                 hparams: ClientHParams, codec: Codec | None, seed: int, round_: int,
                 client: int) -> ClientReport:
    """Client k's whole part of round t: ClientUpdate from the weights it received, then the
    uplink encoding of its update (:func:`report_update`)."""
    r = client_update(client_params, x, y, indices, hparams, seed, round_, client)
    return report_update(r, hparams.model, codec, seed, round_, client)


def report_update(r: ClientResult, model: Model, codec: Codec | None, seed: int, round_: int,
                  client: int) -> ClientReport:
    """The :class:`ClientReport` of client k's result: its update encoded for the uplink
    (``transport.encode_update``, key (seed, t, k)), or no payload when it has NaN or Inf."""
    # A raw update stays where it was computed; the codec quantizes a device update on the
    # device and codes the levels on the host (refsim.compress.codec).
    delta = r.delta  # (P,)
    payload, bits, entropy = None, 0, None
    if bool(get_xp(delta).isfinite(delta).all()):
        payload, bits, entropy = encode_update(codec, model, delta, seed, round_, client)
    return ClientReport(client, r.num_examples, r.num_batches, r.loss_sum, r.num_correct,
                        r.num_seen, payload, bits, entropy)
