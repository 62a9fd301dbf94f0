"""The CPU stand-in for CuPy (tests/fake_cupy) keeps the rules that make CI's run of the gpu
tests through it meaningful: device arrays are a separate type, host arrays do not mix in
silently, and kernels run through the emulator. Loaded under another name, so ``cupy`` keeps
meaning the real package (or none) in this process."""

import importlib.util
import pathlib

import numpy as np
import pytest

from cuda_emulator import compiler

PATH = pathlib.Path(__file__).parent / "fake_cupy" / "cupy" / "__init__.py"


@pytest.fixture(scope="module")
def fake():
    spec = importlib.util.spec_from_file_location("fake_cupy_under_test", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_arrays_are_their_own_type_and_copy_across(fake):
    host = np.arange(6.0)
    dev = fake.asarray(host)
    assert type(dev).__module__ == "cupy" and type(dev) is not np.ndarray
    host[0] = 99.0
    assert float(dev[0]) == 0.0  # asarray copied, as a transfer does
    back = dev.get()
    assert type(back) is np.ndarray and back.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert type(fake.exp(dev)) is type(dev) and type(dev * np.float32(2)) is type(dev)


def test_host_arrays_do_not_mix_into_device_work(fake):
    dev = fake.asarray(np.arange(6.0))
    with pytest.raises(TypeError, match="mixes a device array with a host array"):
        dev + np.ones(6)
    with pytest.raises(TypeError, match="host index array"):
        dev[np.array([0, 1])]
    with pytest.raises(TypeError, match="assigning a host array"):
        dev[:2] = np.ones(2)
    with pytest.raises(TypeError, match="ascontiguousarray of a host array"):
        fake.ascontiguousarray(np.ones(2))
    assert float(dev[fake.asarray(np.array([5]))][0]) == 5.0


@pytest.mark.skipif(compiler() is None, reason="no C++ compiler for the kernel emulator")
def test_raw_modules_run_through_the_emulator(fake):
    from refsim.nn.cuda import elementwise
    x = fake.asarray(np.array([-1.0, 2.0, 0.0]))
    y, mask = fake.asarray(np.zeros(3)), fake.asarray(np.zeros(3, dtype=bool))
    kernel = fake.RawModule(code=elementwise.SOURCE, options=("-Dreal_t=double",)) \
        .get_function("refsim_relu_forward")
    kernel((1,), (256,), (x, y, mask, np.int64(3)))
    assert y.get().tolist() == [0.0, 2.0, 0.0] and mask.get().tolist() == [False, True, False]
    with pytest.raises(TypeError, match="host array"):
        kernel((1,), (256,), (np.zeros(3), y, mask, np.int64(3)))
