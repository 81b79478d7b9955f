# dynrank: common commands. `make help` lists them.
PYTHON ?= python3
ARGS ?=

.PHONY: help install test train tables reproduce-tables bench clean

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

install: ## install dynrank (editable) with test dependencies
	$(PYTHON) -m pip install -e '.[dev]'

test: ## run the CPU test suite
	$(PYTHON) -m pytest -q -p no:cacheprovider

train: ## one run, e.g. make train ARGS="task=cola method=dora"
	$(PYTHON) -m dynrank.train $(ARGS)

clean: ## remove local run directories (not results/)
	rm -rf outputs multirun
