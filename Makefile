# The two set-up commands of the README. Both install into .venv first (idempotent).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dmesr-installed
# llama.cpp is compiled for x86-64-v3 (AVX2/FMA/F16C), not -march=native: on CPUs with AMX
# a native build segfaults in ggml's AMX matmul inside Firecracker VMs (docs/enhance.md).
# No llava/mtmd library: dmesr's local backend is text-only, and skipping it saves build time.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF

.PHONY: demo test install lint

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from the local CPU wheel: any other spec pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	# --no-cache-dir: a wheel cached from an earlier native build would be reused otherwise
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q --no-cache-dir "llama-cpp-python[server]==0.3.36"
	$(BIN)/pip install -q -e ".[dev,encoders,llm]"
	# the embedded default dataset ships inside the recbole wheel; its pinned deps are not needed
	$(BIN)/pip install -q --no-deps recbole==1.2.1
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/dmesr pipeline configs/pipelines/demo_ml100k.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
