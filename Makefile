# dynrank: common commands. `make help` lists them.
PYTHON ?= python3
ARGS ?=
TABLES ?= all
# install-cpu: torch from PyTorch's CPU wheel index (no CUDA libraries), asked first whether it answers (within
# INDEX_TIMEOUT seconds); TORCH_INDEX= takes $(TORCH) from pip's own sources (offline: local wheels, or a mirror)
TORCH ?= torch
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
INDEX_TIMEOUT ?= 10

.PHONY: help install install-cpu demo test test-fast check-readme train tables reproduce-tables bench clean

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

install: ## install dynrank (editable) with test dependencies (torch: pip's default build, with CUDA on Linux)
	$(PYTHON) -m pip install -e '.[dev]'

install-cpu: ## CPU-only machine: torch's CPU build first (1.8 GB, no CUDA libraries), then as install; offline or a mirror: make install-cpu TORCH_INDEX= TORCH='torch==2.13.0'
	$(if $(TORCH_INDEX),$(PYTHON) scripts/check_index.py '$(TORCH_INDEX)' --timeout $(INDEX_TIMEOUT))
	$(PYTHON) -m pip install '$(TORCH)' $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PYTHON) -m pip install -e '.[dev]'

demo: ## a CPU run that visibly learns in ~2 min (LoRA on MiniLM, 6,000 SST-2 sentences); ARGS="hydra overrides"
	$(PYTHON) scripts/demo.py $(ARGS)

test: ## run the CPU test suite (what CI runs)
	$(PYTHON) -m pytest -p no:cacheprovider -n 2

test-fast: ## the tests not marked slow (no training, no subprocess), in one process: ~45 s on 2 idle cores (README: Tests), for a quick loop
	$(PYTHON) -m pytest -p no:cacheprovider -m "not slow"

check-readme: ## the README's numbers re-measured, each beside its claim (no training: ~30 s of CPU); SLOW=1 also trains (make demo, the dora example, the smoke preset, make test-fast: ~10 min)
	$(PYTHON) scripts/check_readme.py $(if $(SLOW),--slow)

train: ## one run, e.g. make train ARGS="task=cola method=dora"
	$(PYTHON) -m dynrank.train $(ARGS)

reproduce-tables: ## run the paper's presets not run yet, then the tables; TABLES=table2,table5 ARGS="hydra overrides"
	$(PYTHON) scripts/reproduce_tables.py --tables $(TABLES) $(ARGS)

tables: ## write results/tables/ from the results store; ARGS="--model minilm --store results/smoke/runs --out results/smoke/tables"
	$(PYTHON) -m dynrank.report $(ARGS)

bench: ## GPU: training throughput and peak memory of every method beside PEFT (writes benchmarks/*.json)
	$(PYTHON) scripts/bench.py $(ARGS)

clean: ## remove local run directories (not results/)
	rm -rf outputs multirun
