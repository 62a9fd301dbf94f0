#!/usr/bin/env bash
# Everything refsim checks on a GPU, in one prepared run (docs/gpu.md): the environment, the
# tests marked gpu, the GPU benchmarks against PyTorch, the Table 2 CNN row E=5, B=10, IID, and
# the README's main job on the GPU.
# Run from the repository root on the GPU machine, with results written under $OUT (default
# ./gpu-results). Each stage has its own time limit, so a slow stage cannot starve the others;
# the stages run in order of importance. Needs CuPy, numba, scipy, pytest, pytest-benchmark and a
# CUDA build of torch; refsim itself runs from the checkout (PYTHONPATH), nothing is installed.
#
#   bash bench/gpu_session.sh            # about 9 minutes at most, 5 to 6 expected
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
TESTS_S="${TESTS_S:-210}" BENCH_S="${BENCH_S:-180}" TABLE2_S="${TABLE2_S:-90}" MAIN_S="${MAIN_S:-60}"

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PY" - <<'PY'
import platform
import cupy, numba, numpy, scipy
print("python", platform.python_version(), "numpy", numpy.__version__, "numba", numba.__version__,
      "scipy", scipy.__version__)
print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "driver", cupy.cuda.runtime.driverGetVersion())
print("device", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
          torch.backends.cudnn.version(), "sees GPU", torch.cuda.is_available())
except ImportError as e:
    print("torch: not importable:", e)
PY
} 2>&1 | tee "$OUT/environment.txt"

echo "== 1. tests marked gpu (limit ${TESTS_S} s)"
timeout "$TESTS_S" "$PY" -m pytest -q -m gpu tests/ -p no:cacheprovider -rs 2>&1 \
  | tee "$OUT/gpu_tests.log" | tail -25

echo "== 2. benchmarks against PyTorch (limit ${BENCH_S} s)"
timeout "$BENCH_S" "$PY" -m pytest -q bench/bench_gpu.py -p no:cacheprovider --benchmark-enable \
  --benchmark-json="$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.log" | tail -30
[ -s "$OUT/gpu_bench.json" ] && "$PY" bench/ratios.py "$OUT/gpu_bench.json" \
  | tee "$OUT/gpu_ratios.txt"

echo "== 3. Table 2, CNN, IID, E=5, B=10, C=0.1 (limit ${TABLE2_S} s)"
timeout "$TABLE2_S" "$PY" bench/reproduce_table2.py --backend cupy --client-stack 10 \
  --rows iid:5:10 --lr 0.1 --max-rounds 40 2>&1 | tee "$OUT/table2.log"
echo "== 4. the main job, refsim run, on the GPU (limit ${MAIN_S} s)"
timeout "$MAIN_S" "$PY" -m refsim.cli run --backend cupy --client-stack 10 --quiet --plot no \
  --out "$OUT/refsim-run" 2>&1 | tee "$OUT/refsim_run.log" | tail -12
echo "results in $OUT"
