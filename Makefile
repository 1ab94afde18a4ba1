# Quick start:  make bench   (set up + run the main job)      make test   (set up + run the tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The project's own environment pins torch to the CPU wheel on local disk; an unpinned torch pulls a
# multi-GB CUDA build.
TORCH  ?= torch==2.13.0
NVCC   ?= nvcc
CUDA_ARCH ?= 90
OUT    ?= report

KERNEL_SOURCES := $(wildcard kernels/include/*.h kernels/cpu/*.pyx kernels/cpu/*.pxd kernels/cuda/*)
STAMP := $(VENV)/.cbbench-installed

.PHONY: setup test bench weights cuda-check clean

$(STAMP): setup.py pyproject.toml $(KERNEL_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" "setuptools>=68" wheel "Cython>=3.0" numpy
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[test,bench]"
	$(BIN)/python -m cbbench.info
	touch $@

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/cbbench bench --out $(OUT)

weights: $(STAMP)
	$(BIN)/cbbench weights --counts 5000,2997,1796,1077,645,387,232,139,83,50 --out $(OUT)

# Compile every torch-free CUDA source with the local nvcc (no GPU, no torch needed).
cuda-check:
	@set -e; srcs="$$(ls kernels/cuda/*.cu 2>/dev/null)"; \
	if [ -z "$$srcs" ]; then echo "cuda-check: no CUDA sources"; exit 1; fi; \
	tmp=$$(mktemp -d); for f in $$srcs; do \
	  echo "nvcc sm_$(CUDA_ARCH): $$f"; \
	  $(NVCC) -std=c++17 -O3 -arch=sm_$(CUDA_ARCH) -Ikernels/include -Ikernels/cuda -c $$f -o $$tmp/$$(basename $$f).o; \
	done; rm -rf $$tmp; echo "cuda-check: OK"

clean:
	rm -rf build *.egg-info cbbench/*.so kernels/cpu/*.cpp $(OUT)
