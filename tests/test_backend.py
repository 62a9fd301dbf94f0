"""refsim.backend: the array-module helpers and the random-stream rule."""

import numpy as np
import pytest

from refsim.backend import Purpose, available_backends, get_xp, make_rng, to_numpy


def test_make_rng_is_default_rng_of_seed_purpose_keys():
    a = make_rng(7, Purpose.BATCH_ORDER, 3, 12, 0).integers(0, 2**31, size=8)
    b = np.random.default_rng([7, 3, 3, 12, 0]).integers(0, 2**31, size=8)
    np.testing.assert_array_equal(a, b)


def test_streams_differ_by_purpose_and_keys():
    draws = {
        (Purpose.INIT,): make_rng(1, Purpose.INIT).random(),
        (Purpose.PARTITION,): make_rng(1, Purpose.PARTITION).random(),
        (Purpose.CLIENT_SAMPLE, 0): make_rng(1, Purpose.CLIENT_SAMPLE, 0).random(),
        (Purpose.CLIENT_SAMPLE, 1): make_rng(1, Purpose.CLIENT_SAMPLE, 1).random(),
        (Purpose.BATCH_ORDER, 0, 0, 0): make_rng(1, Purpose.BATCH_ORDER, 0, 0, 0).random(),
        (Purpose.BATCH_ORDER, 0, 1, 0): make_rng(1, Purpose.BATCH_ORDER, 0, 1, 0).random(),
        (Purpose.QUANTIZE, 1, 0): make_rng(1, Purpose.QUANTIZE, 1, 0).random(),
        (Purpose.BROADCAST, 1): make_rng(1, Purpose.BROADCAST, 1).random(),
    }
    assert len(set(draws.values())) == len(draws)
    assert make_rng(2, Purpose.INIT).random() != draws[(Purpose.INIT,)]


def test_seed_sequence_pads_with_zeros_which_is_why_arity_is_fixed():
    # The hazard the fixed arity guards against: trailing zero keys do not change the stream.
    assert np.random.default_rng([7, 3]).random() == np.random.default_rng([7, 3, 0]).random()
    with pytest.raises(ValueError, match=r"takes keys \('round',\)"):
        make_rng(7, Purpose.CLIENT_SAMPLE)
    with pytest.raises(ValueError, match="takes keys"):
        make_rng(7, Purpose.INIT, 0)


@pytest.mark.parametrize("seed, keys, error", [
    (-1, (), ValueError), (2**32, (), ValueError), (1.5, (), TypeError), ("1", (), TypeError),
    (0, (2**32,), ValueError), (0, (-3,), ValueError)])
def test_make_rng_rejects_words_outside_uint32(seed, keys, error):
    purpose = Purpose.CLIENT_SAMPLE if keys else Purpose.INIT
    with pytest.raises(error):
        make_rng(seed, purpose, *keys)


def test_make_rng_rejects_a_plain_int_purpose():
    with pytest.raises(TypeError, match="Purpose"):
        make_rng(0, 2, 0)


def test_get_xp_and_to_numpy():
    a = np.arange(3)
    assert get_xp(a) is np and get_xp("numpy") is np
    assert to_numpy(a) is a
    assert "numpy" in available_backends()
    with pytest.raises(ValueError, match="unknown backend"):
        get_xp("jax")


def test_cupy_without_a_device_or_installed_is_a_one_line_error(monkeypatch):
    """Two ways 'cupy' can be unavailable, each named: not installed, or installed but no
    device (CuPy imports fine on a machine without a GPU and fails only at first use)."""
    import types

    from refsim import backend

    monkeypatch.setattr(backend, "_cupy", lambda: None)
    with pytest.raises(ValueError, match="CuPy is not installed"):
        get_xp("cupy")

    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    runtime = types.SimpleNamespace(getDeviceCount=no_device)
    gpu_less = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))
    monkeypatch.setattr(backend, "_cupy", lambda: gpu_less)
    assert available_backends() == ["numpy"]
    with pytest.raises(ValueError, match="CuPy sees no CUDA device"):
        get_xp("cupy")
