#!/usr/bin/env bash
# One prepared GPU session (device machine with its own torch/cmake/ninja/pybind11/scikit-build-core):
# build fastad with CUDA kernels for the local GPU, run the CUDA tests, then benchmarks/bench_gpu.py.
# Logs and the JSON go to $OUT (or ./gpu_out). Usage: bash benchmarks/gpu_run.sh [bench_gpu.py args]
set -u
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
PY=${PY:-python3}
ARCH=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu,memory.used --format=csv
echo "== build (arch $TORCH_CUDA_ARCH_LIST)"; t0=$(date +%s)
timeout 300 $PY -m pip install --no-build-isolation --no-deps -Cbuild-dir=/tmp/fastad-build \
  -Ccmake.define.FASTAD_WITH_CUDA=ON . >"$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
(cd /tmp && $PY -c "import fastad; print(fastad.build_info())") || exit 1
echo "== CUDA tests"; t0=$(date +%s)
timeout ${TEST_TIMEOUT:-180} $PY -m pytest -q -p no:cacheprovider -o addopts="" -k cuda --timeout 90 \
  --continue-on-collection-errors tests/ops tests/detectors >"$OUT/pytest.log" 2>&1
echo "pytest rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "passed|failed|error" "$OUT/pytest.log" | tail -3
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -30
echo "== bench"; t0=$(date +%s)
timeout ${BENCH_TIMEOUT:-240} $PY benchmarks/bench_gpu.py --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/bench.log" | grep -v "^\s*$"
echo "bench: $(( $(date +%s) - t0 )) s"
