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

KERNEL_SOURCES := $(wildcard kernels/include/*.h kernels/ops/*.h kernels/ops/*.cpp kernels/cpu/*.h kernels/cpu/*.pyx kernels/cpu/*.pxd kernels/cpu/*.cpp kernels/cuda/*.cu kernels/cuda/*.cuh kernels/cuda/*.h kernels/cuda/*.cpp)
STAMP := $(VENV)/.cbbench-installed

.PHONY: setup test bench weights install-check cuda-check cuda-emu-check clean

$(STAMP): setup.py pyproject.toml $(KERNEL_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" "setuptools>=68" wheel "Cython>=3.0" numpy ninja
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[test,bench,ray]"
	$(BIN)/python -m cbbench.info
	touch $@

setup: $(STAMP)

# The CUDA kernels run emulated first wherever the CUDA toolkit's headers and g++ exist (CI's machine).
test: $(STAMP)
	@if $(BIN)/python $(EMU)/build_emulator.py --probe; then $(MAKE) --no-print-directory cuda-emu-check; fi
	$(BIN)/python -m pytest -q

# The main job, about two minutes on 2 CPU cores. BENCH_FLAGS: e.g. --full (the complete sweep),
# --skip-accuracy, --device cpu, --seeds 3 (see `cbbench bench --help`)
bench: $(STAMP)
	$(BIN)/cbbench bench --out $(OUT) $(BENCH_FLAGS)

# The install paths from built wheels in a fresh virtual environment with the pinned torch only: the
# kernels built by pip's isolated build, and a wheel without kernels compiling them on first use
# (scripts/install_check.sh; CI runs it after `make test`)
install-check:
	bash scripts/install_check.sh $(PYTHON) "$(TORCH)"

weights: $(STAMP)
	$(BIN)/cbbench weights --counts 5000,2997,1796,1077,645,387,232,139,83,50 --out $(OUT)/weights

# Compile every torch-free CUDA source with the local nvcc (no GPU, no torch needed), for sm_90 and
# sm_80, with the half-precision restrictions of torch's CUDAExtension build and warnings as errors;
# then compile the torch binding against torch's headers (any torch build) and check that it resolves
# to the launchers the kernels define; then link the kernels with a host harness that checks the
# launch plans and runs without a GPU; then run the kernels' per-thread / per-row device logic on the
# host against the reference's loss (kernels/cuda/harness/device_math_check.cu, built alongside).
CHECK_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))
CUDA_ARCHS ?= $(CUDA_ARCH) 80
CUDA_CHECK_FLAGS := -std=c++17 -O3 -Werror all-warnings -Ikernels/include -Ikernels/cuda \
	-D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
	-D__CUDA_NO_HALF2_OPERATORS__
cuda-check:
	@set -e; srcs="$$(ls kernels/cuda/*.cu 2>/dev/null)"; \
	if [ -z "$$srcs" ]; then echo "cuda-check: no CUDA sources"; exit 1; fi; \
	gencode=""; for a in $(CUDA_ARCHS); do gencode="$$gencode -gencode=arch=compute_$$a,code=sm_$$a"; done; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; pids=""; \
	for f in $$srcs; do \
	  echo "nvcc sm_{$(CUDA_ARCHS)}: $$f"; \
	  $(NVCC) $(CUDA_CHECK_FLAGS) $$gencode -c $$f -o $$tmp/$$(basename $$f).o & pids="$$pids $$!"; \
	done; \
	echo "nvcc (host test): kernels/cuda/harness/device_math_check.cu"; \
	$(NVCC) $(CUDA_CHECK_FLAGS) kernels/cuda/harness/device_math_check.cu -o $$tmp/device_math_check & pids="$$pids $$!"; \
	fail=0; for p in $$pids; do wait $$p || fail=1; done; \
	if [ $$fail != 0 ]; then echo "cuda-check: FAILED (compile)"; exit 1; fi; \
	bash scripts/check_binding.sh "$(CHECK_PYTHON)" "$(NVCC)" $$tmp; \
	$(NVCC) $(CUDA_CHECK_FLAGS) $$gencode kernels/cuda/harness/plan_check.cu $$tmp/*.o -o $$tmp/plan_check; \
	$$tmp/plan_check; \
	$$tmp/device_math_check; echo "cuda-check: OK"

# Execute every CUDA kernel on the CPU under the test-only emulator (kernels/cuda/harness/emu/README.md):
# every launch path, dtype and option, the loss and every gradient entry against cbbench/reference.py,
# under several fiber orders and on a device without clusters. No GPU, no CUDA runtime.
EMU := kernels/cuda/harness/emu
cuda-emu-check: $(STAMP)
	$(BIN)/python $(EMU)/check_kernels.py

clean:
	rm -rf build *.egg-info cbbench/*.so cbbench/_build_info.json kernels/cpu/_cpu.cpp kernels/cpu/_cpu.h $(OUT)
