"""Test helpers: the one tolerance rule, a readable comparison (STYLE.md habit 12), and the
small MNIST slices and unequal partitions the FedAvg tests share."""

import functools

import numpy as np

from refsim.data import load_mnist
from refsim.fedavg import from_images


def tolerance(dtype) -> dict:
    """|actual - expected| <= atol + rtol * |expected|, chosen by dtype."""
    if np.dtype(dtype) == np.float64:
        return {"rtol": 1e-10, "atol": 1e-12}
    return {"rtol": 2e-4, "atol": 2e-6}


def assert_close(actual, expected, what: str, dtype=None) -> None:
    """assert_allclose with the dtype's tolerance and a message naming what is compared."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    tol = tolerance(dtype if dtype is not None else expected.dtype)
    np.testing.assert_allclose(actual, expected, err_msg=what, **tol)


def relative_error(a: float, b: float, floor: float = 1e-8) -> float:
    """|a - b| / max(|a|, |b|, floor): relative, but not blown up where both are ~0."""
    return abs(a - b) / max(abs(a), abs(b), floor)


def check_grad(f, arr: np.ndarray, grad: np.ndarray, what: str, rng: np.random.Generator,
               num_samples: int = 20, eps: float = 1e-6, max_rel: float = 1e-6,
               min_fraction: float = 0.0) -> None:
    """Compare ``grad`` (dL/darr, analytic) to central differences of the scalar ``f()``.

    ``f`` reads ``arr`` (float64), which is perturbed in place and restored. All coordinates
    are checked when there are at most ``num_samples``; otherwise a random sample of those
    with |grad| >= min_fraction * max|grad|. (A central difference of a loss of size ~1 has
    an absolute rounding error of ~1e-16 / eps, so a coordinate whose gradient is 1e-6 of
    the largest cannot be resolved to a relative 1e-6; ``min_fraction`` skips those.)
    """
    assert arr.dtype == np.float64 and grad.shape == arr.shape, what
    flat, gflat = arr.reshape(-1), grad.reshape(-1)
    if flat.size <= num_samples:
        indices = np.arange(flat.size)
    else:
        candidates = np.flatnonzero(np.abs(gflat) >= min_fraction * np.abs(gflat).max())
        indices = rng.choice(candidates, size=min(num_samples, candidates.size), replace=False)
    for i in indices:
        old = flat[i]
        flat[i] = old + eps
        f_plus = f()
        flat[i] = old - eps
        f_minus = f()
        flat[i] = old
        numeric = (f_plus - f_minus) / (2 * eps)
        err = relative_error(numeric, gflat[i])
        assert err < max_rel, (f"{what}: index {np.unravel_index(i, arr.shape)} analytic "
                               f"{gflat[i]:.12g} vs central difference {numeric:.12g} "
                               f"(relative error {err:.2e})")


@functools.lru_cache(maxsize=None)
def mnist_slice(dtype: str, num_train: int, num_test: int):
    """The first ``num_train`` / ``num_test`` embedded MNIST examples as FedData (cached)."""
    return from_images(load_mnist(), np.dtype(dtype), train_limit=num_train, test_limit=num_test)


def contiguous_partition(sizes) -> list:
    """Client k gets the next ``sizes[k]`` examples (deterministic, unequal n_k)."""
    ends = np.cumsum(sizes)
    return [np.arange(e - n, e) for n, e in zip(sizes, ends)]


def assert_same_checkpoint(actual: str, expected: str) -> None:
    """Two checkpoint.npz files hold the same round, weights, run state (kept client optimizer
    states included) and meta, array for array, bit for bit (the zip bytes differ: np.savez
    stamps the time)."""
    from refsim.fedavg.storage import load_checkpoint
    t_a, p_a, s_a, m_a = load_checkpoint(actual)
    t_e, p_e, s_e, m_e = load_checkpoint(expected)
    assert t_a == t_e and m_a == m_e, "round or meta"
    assert p_a.dtype == p_e.dtype
    np.testing.assert_array_equal(p_a, p_e, err_msg="params")
    assert sorted(s_a) == sorted(s_e), "state keys"
    for k in s_e:
        assert s_a[k].dtype == s_e[k].dtype, k
        np.testing.assert_array_equal(s_a[k], s_e[k], err_msg=f"state {k}")


def assert_same_trace(actual: str, expected: str) -> None:
    """Two trace/ folders: the same files; the JSON byte for byte; every npz array equal, of
    the same dtype (npz bytes carry a time stamp)."""
    import os

    from refsim.safe_npz import read_npz
    names = sorted(os.listdir(expected))
    assert sorted(os.listdir(actual)) == names and names, (sorted(os.listdir(actual)), names)
    for name in names:
        a, e = os.path.join(actual, name), os.path.join(expected, name)
        if name.endswith(".json"):
            with open(a, "rb") as fa, open(e, "rb") as fe:
                assert fa.read() == fe.read(), name
            continue
        za, ze = read_npz(a), read_npz(e)
        assert sorted(za) == sorted(ze), name
        for k in ze:
            assert za[k].dtype == ze[k].dtype, f"{name} {k}"
            np.testing.assert_array_equal(za[k], ze[k], err_msg=f"{name} {k}")
