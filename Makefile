# `make demo` and `make test` each do their own set-up (idempotent, offline).
PY ?= python3

.PHONY: setup demo test bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	polyprune demo

test: setup
	$(PY) -m pytest -n 2 --dist loadfile tests

bench: setup
	$(PY) benchmarks/prune_speed.py

clean:
	rm -rf .setup-stamp .torch-constraint.txt build src/*.egg-info .pytest_cache
