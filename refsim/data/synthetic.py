"""The Synthetic(alpha, beta) federated dataset of FedProx.

Li, Sahu, Zaheer, Sanjabi, Talwalkar & Smith, "Federated Optimization in Heterogeneous
Networks", MLSys 2020 (arXiv:1812.06127), Section 5.1 and Appendix C.1, following Shamir et al.
2014. For device k: y = argmax(softmax(W_k x + b_k)), x in R^60, W_k in R^{10x60}, b_k in R^10;
W_k ~ N(u_k, 1), b_k ~ N(u_k, 1), u_k ~ N(0, alpha); x_k ~ N(v_k, Sigma) with Sigma diagonal,
Sigma_jj = j^(-1.2); each element of v_k ~ N(B_k, 1), B_k ~ N(0, beta). 30 devices whose sizes
follow a power law. alpha controls how much the local models differ, beta the local data.

Deviations, each matching the authors' generator (github.com/litian96/FedProx,
``data/synthetic_*/generate_synthetic.py``) where the paper is silent or differs:

* alpha and beta are used as *standard deviations* (``normal(0, alpha)`` from NumPy's
  legacy global generator there), although the paper writes N(0, alpha).
* sizes: ``lognormal(4, 2).astype(int) + 50`` per device (the "power law" of the paper).
* Synthetic-IID (``iid=True``): one W, b ~ N(0, 1) shared by all devices and v_k = 0.
* argmax(softmax(z)) is computed as argmax(z) (softmax is monotone; ties go to the lower class).
* The numbers differ from the authors' files: they used the legacy global ``np.random`` and
  ``multivariate_normal``; here every draw comes from the ``rng`` argument, in the order listed
  in :func:`synthetic`, and x = v_k + sqrt(diag(Sigma)) * standard normal (exact for a diagonal
  Sigma). refsim passes ``refsim.backend.make_rng(seed, Purpose.DATA)``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SyntheticData", "synthetic"]


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """x : ndarray, shape (N, D) float64;  y : ndarray, shape (N,) int64;
    parts : list of K int64 arrays, the (contiguous, ascending) indices of each device."""

    x: np.ndarray
    y: np.ndarray
    parts: list[np.ndarray]


def synthetic(alpha: float, beta: float, rng: np.random.Generator, num_clients: int = 30,
              dim: int = 60, num_classes: int = 10, iid: bool = False,
              samples_per_client: np.ndarray | None = None) -> SyntheticData:
    """Generate Synthetic(alpha, beta) (``iid=True``: Synthetic-IID).

    rng draws, in order (K = num_clients, D = dim, C = num_classes):

    1. ``n = rng.lognormal(4, 2, K).astype(int) + 50``  (skipped if ``samples_per_client``)
    2. ``u = rng.normal(0, alpha, K)``;  3. ``B = rng.normal(0, beta, K)``
    4. non-IID: for k in 0..K-1, ``v[k] = rng.normal(B[k], 1, D)``;
       IID: ``v = 0``, ``W = rng.normal(0, 1, (D, C))``, ``b = rng.normal(0, 1, C)``
    5. for k in 0..K-1: non-IID ``W = rng.normal(u[k], 1, (D, C))``, ``b = rng.normal(u[k], 1, C)``;
       then ``x = v[k] + rng.standard_normal((n[k], D)) * scale``,
       ``y = argmax(x @ W + b, axis=1)``, with
       ``scale = np.sqrt(np.arange(1, D + 1, dtype=np.float64) ** -1.2)`` (write it exactly so
       for a bit-identical replay: ``(j ** -1.2) ** 0.5`` can differ in the last bit).

    Returns
    -------
    SyntheticData: device k owns rows ``parts[k]`` (devices are stored one after another).

    >>> from refsim.backend import Purpose, make_rng
    >>> d = synthetic(1.0, 1.0, make_rng(0, Purpose.DATA), num_clients=3)
    >>> d.x.shape[1], len(d.parts), sum(len(p) for p in d.parts) == len(d.y)
    (60, 3, True)
    """
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    for name, value in (("num_clients", num_clients), ("dim", dim), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    k, d, c = int(num_clients), int(dim), int(num_classes)
    if samples_per_client is None:
        n = rng.lognormal(4, 2, k).astype(np.int64) + 50  # (K,)
    else:
        n = np.asarray(samples_per_client, dtype=np.int64)  # (K,)
        if n.shape != (k,) or (n < 1).any():
            raise ValueError(f"samples_per_client must be {k} positive ints, got {n}")
    u = rng.normal(0.0, alpha, k)  # (K,) mean of W_k and b_k
    big_b = rng.normal(0.0, beta, k)  # (K,) mean of v_k
    if iid:
        v = np.zeros((k, d))  # (K, D)
        w_shared = rng.normal(0.0, 1.0, (d, c))  # (D, C)
        b_shared = rng.normal(0.0, 1.0, c)  # (C,)
    else:
        v = np.stack([rng.normal(big_b[i], 1.0, d) for i in range(k)])  # (K, D)
    scale = np.sqrt(np.arange(1, d + 1, dtype=np.float64) ** -1.2)  # (D,) sqrt(Sigma_jj)
    xs, ys = [], []
    for i in range(k):
        if iid:
            w, b = w_shared, b_shared
        else:
            w = rng.normal(u[i], 1.0, (d, c))  # (D, C)
            b = rng.normal(u[i], 1.0, c)  # (C,)
        x = v[i] + rng.standard_normal((int(n[i]), d)) * scale  # (n_k, D)
        xs.append(x)
        ys.append(np.argmax(x @ w + b, axis=1).astype(np.int64))  # (n_k,)
    bounds = np.concatenate([[0], np.cumsum(n)])  # (K+1,)
    parts = [np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i in range(k)]
    return SyntheticData(x=np.concatenate(xs), y=np.concatenate(ys), parts=parts)
