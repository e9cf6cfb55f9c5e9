#!/usr/bin/env bash
# One prepared GPU session (device machine with its own torch/cmake/ninja/pybind11/scikit-build-core):
# build fastad with CUDA kernels for the local GPU, run the CUDA tests (also under the other k <= 32
# selection kernel and under tiny chunk/tile shapes, which exercise every chunk and tile boundary),
# then benchmarks/bench_gpu.py, then (when E2E_DATA names an MVTec-layout folder) the CLI end to end
# on the GPU: `fastad fit` + `fastad evaluate` of PatchCore with --device cuda.
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
PYTEST="$PY -m pytest -q -p no:cacheprovider -o addopts= --timeout 90 --continue-on-collection-errors"
run_tests() {  # $1: label, rest: pytest args; appends to one log
  local label=$1; shift; local t0=$(date +%s)
  echo "==== $label" >>"$OUT/pytest.log"
  timeout ${TEST_TIMEOUT:-180} $PYTEST "$@" >>"$OUT/pytest.log" 2>&1
  echo "pytest [$label] rc=$? in $(( $(date +%s) - t0 )) s: $(tail -1 "$OUT/pytest.log")"
}
echo "== CUDA tests"; : >"$OUT/pytest.log"
run_tests "all cuda" -k "cuda or tile_batches" tests/ops tests/detectors
if [ -z "${MAIN_TESTS_ONLY:-}" ]; then  # MAIN_TESTS_ONLY=1: skip the knn/group_min variants below
FASTAD_CUDA_KNN_SELECT=queue run_tests "knn, queue selection for every k <= 32" -k cuda tests/ops/test_knn.py
FASTAD_CUDA_KNN_SELECT=warp run_tests "knn, warp-list selection for every k <= 32" -k cuda tests/ops/test_knn.py
FASTAD_CUDA_CHUNK_ROWS=300 FASTAD_CUDA_TILE_ROWS=7 run_tests "knn+group_min, 300-row chunks x 7-row tiles" \
  -k cuda tests/ops/test_knn.py tests/ops/test_group_min.py
fi
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -30
echo "== bench"; t0=$(date +%s)
timeout ${BENCH_TIMEOUT:-240} $PY benchmarks/bench_gpu.py --out "$OUT/gpu.json" "$@" 2>&1 | tee "$OUT/bench.log" | grep -v "^\s*$"
echo "bench: $(( $(date +%s) - t0 )) s"
if [ -n "${E2E_DATA:-}" ]; then
  echo "== CLI end to end on the GPU ($E2E_DATA)"
  ( set -e; t0=$(date +%s)
    $PY -m fastad fit --data "$E2E_DATA" --out /tmp/e2e_model.safetensors --device cuda --seed 0 ${E2E_FIT_ARGS:-}
    t1=$(date +%s); echo "fit: $((t1 - t0)) s"
    $PY -m fastad evaluate --model /tmp/e2e_model.safetensors --data "$E2E_DATA" --out /tmp/e2e_report --device cuda \
      --heatmaps 8 --seed 0
    echo "evaluate: $(( $(date +%s) - t1 )) s"
    cp /tmp/e2e_report/metrics.json "$OUT/e2e_metrics.json" ) >"$OUT/e2e.log" 2>&1
  echo "e2e rc=$?"; tail -25 "$OUT/e2e.log"
fi
