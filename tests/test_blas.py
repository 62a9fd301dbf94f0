"""refsim.blas: what BLAS NumPy runs on, read back from the library itself."""

import os
import subprocess
import sys

import numpy as np
import pytest

from refsim import cli
from refsim.blas import blas_runtime, describe_blas


def _in_child(**env) -> str:
    """describe_blas() in a fresh interpreter (OpenBLAS reads its settings when it loads)."""
    child = {k: v for k, v in os.environ.items()
             if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", "from refsim.blas import describe_blas; "
                          "print(describe_blas())"], env={**child, **env}, check=True,
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip()


def test_the_build_configuration_is_numpy_s():
    blas = blas_runtime()
    config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    assert (blas.name, blas.version) == (config["name"], config["version"])
    assert describe_blas().startswith(f"{blas.name} {blas.version}, core ")


@pytest.mark.skipif(blas_runtime().core == "unknown",
                    reason="NumPy's BLAS here is not an OpenBLAS that can be asked")
def test_the_kernel_and_threads_are_what_the_environment_forced():
    assert blas_runtime().threads >= 1
    assert _in_child(OPENBLAS_CORETYPE="Nehalem", OPENBLAS_NUM_THREADS="1").endswith(
        ", core Nehalem, 1 thread")
    assert _in_child(OPENBLAS_NUM_THREADS="2").endswith(", 2 threads")


def test_refsim_info_and_run_summaries_name_the_blas(capsys):
    assert cli.main(["info"]) == 0
    assert f"blas: {describe_blas()}" in capsys.readouterr().out.splitlines()
    from refsim.cli._common import versions
    assert versions()["blas"] == describe_blas()


def test_a_reader_that_stops_early_gets_no_traceback():
    """``refsim info | head -1`` with a reader that is gone before anything is written:
    exit code 1, nothing on stderr (buffered or not)."""
    for unbuffered in ("", "1"):
        env = {**os.environ, "PYTHONUNBUFFERED": unbuffered}
        if not unbuffered:
            env.pop("PYTHONUNBUFFERED")
        child = subprocess.Popen([sys.executable, "-m", "refsim.cli", "info"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        child.stdout.close()  # the reader goes away first
        err = child.stderr.read()
        assert child.wait(timeout=120) == 1, (unbuffered, err.decode())
        assert err == b"", err.decode()
