# One place for the commands people and CI run. Every target creates the virtualenv if needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m agent.demo

# Two workers: most of the suite waits on real daemons, buses and sandboxes, so two share the
# 2-core CI machine well; the tests that count decisions under load keep floors that hold with
# a neighbour (tests/faults). The whole suite (1,391 tests, session 12) on a 2-core machine
# other jobs were loading (load 4-6): 918 s of pytest time before that session's trims, 795 s
# after them (the CLI starts without its heavy modules; /status polls and sandbox calls reuse
# one SSL context instead of loading the CA bundle, ~30 ms of CPU, each time; the platform-
# faults daemon holds unconfirmed batches 2 s, not 10). In CI before them: about 10.5 min.
# Session 13: whole files handed out slowest first (pyproject.toml's --dist loadfile; the order
# from tests/durations.json, refreshed with tests/record_durations.py), so both workers end
# together; 680 s of pytest before that session's trims, 514 s after (sum of test times 1335 s
# -> 1012 s; this 2-core machine, load 0.2-1.8 from other jobs).
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check agent drivers tests bench
	$(BIN)/mypy agent drivers bench
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
