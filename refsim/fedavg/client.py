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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refsim.data.batching import client_batches
from refsim.nn import Model, sgd_step

__all__ = ["ClientHParams", "NonFiniteUpdateError", "client_update"]


@dataclass(frozen=True)
class ClientHParams:
    """What a client needs to train: its model, E, B (None = whole client) and eta."""
    model: Model
    epochs: int
    batch_size: int | None
    lr: float


class NonFiniteUpdateError(ValueError):
    """A client's update contains NaN or Inf (``NanPolicy.RAISE``)."""


def client_update(params: np.ndarray, x: np.ndarray, y: np.ndarray, indices: np.ndarray,
                  hparams: ClientHParams, seed: int, round: int, client: int
                  ) -> tuple[np.ndarray, int]:
    """Run ClientUpdate(k, w) and return (delta_k, n_k).

    Parameters
    ----------
    params : ndarray, shape (P,)   the broadcast global weights w_t (not modified)
    x : ndarray, shape (N, C, H, W), same dtype as params   the whole training set
    y : ndarray, shape (N,) int   its labels
    indices : ndarray, shape (n_k,) int   client k's examples (rows of x)
    hparams : ClientHParams
    seed, round, client : int   keys of the batch order (round is the 1-based round t)

    Returns
    -------
    delta : ndarray, shape (P,), dtype of params   w_k - w_t
    n_k : int   number of the client's examples (its weight under ``Weighting.EXAMPLES``)
    """
    w = params.copy()  # (P,)
    for batch in client_batches(indices, hparams.batch_size, hparams.epochs, seed, round, client):
        _, grad = hparams.model.loss_and_grad(w, x[batch], y[batch])  # grad: (P,)
        w = sgd_step(w, grad, hparams.lr)  # (P,)
    return w - params, int(len(indices))
