# dynrank: common commands. `make help` lists them.
PYTHON ?= python3
ARGS ?=
TABLES ?= all
# install-cpu: torch from PyTorch's CPU wheel index (no CUDA libraries); TORCH_INDEX= takes $(TORCH) from pip's own sources
TORCH ?= torch
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: help install install-cpu demo test train tables reproduce-tables bench clean

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

install: ## install dynrank (editable) with test dependencies (torch: pip's default build, with CUDA on Linux)
	$(PYTHON) -m pip install -e '.[dev]'

install-cpu: ## CPU-only machine: torch's CPU build first (an environment of 1.8 GB, no CUDA libraries), then as install
	$(PYTHON) -m pip install '$(TORCH)' $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PYTHON) -m pip install -e '.[dev]'

demo: ## a CPU run that visibly learns in ~2 min (LoRA on MiniLM, 6,000 SST-2 sentences); ARGS="hydra overrides"
	$(PYTHON) scripts/demo.py $(ARGS)

test: ## run the CPU test suite
	$(PYTHON) -m pytest -p no:cacheprovider -n 2

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
