# dynrank: common commands. `make help` lists them.
PYTHON ?= python3
ARGS ?=
TABLES ?= all

.PHONY: help install test train tables reproduce-tables bench clean

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

install: ## install dynrank (editable) with test dependencies
	$(PYTHON) -m pip install -e '.[dev]'

test: ## run the CPU test suite
	$(PYTHON) -m pytest -p no:cacheprovider -n 2

train: ## one run, e.g. make train ARGS="task=cola method=dora"
	$(PYTHON) -m dynrank.train $(ARGS)

reproduce-tables: ## run the paper's presets not run yet, then the tables; TABLES=table2,table5 ARGS="hydra overrides"
	$(PYTHON) scripts/reproduce_tables.py --tables $(TABLES) $(ARGS)

tables: ## write results/tables/ from the results store; ARGS="--model tiny --store results/smoke/runs"
	$(PYTHON) -m dynrank.report $(ARGS)

bench: ## GPU: training throughput and peak memory of every method beside PEFT (writes benchmarks/*.json)
	$(PYTHON) scripts/bench.py $(ARGS)

clean: ## remove local run directories (not results/)
	rm -rf outputs multirun
