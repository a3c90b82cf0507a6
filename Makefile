# jaxseq: every target creates and uses its own virtual environment in .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Data-only packages, installed without their (heavy, unused) dependencies.
DATA_PKGS := aeon==1.6.0 turkish-treebanks==1.0.0
PYTEST_ARGS ?=
# Test processes: the suite compiles thousands of XLA programs; two workers use both
# cores of the CI machine and halve what one process holds in memory.
PYTEST_WORKERS ?= 2
# `make mutants`: the section of reports/mutants.md to (re)write, and extra tools.mutants flags.
MUTANTS_LABEL ?= latest
MUTANTS_ARGS ?=
DEV_STAMP := $(VENV)/.dev-installed-stamp

.PHONY: install test test-slow lint run experiments bench clean reliability-table mutants

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps $(DATA_PKGS)
	touch $(STAMP)

install: $(STAMP)

## The test suite (what CI runs). Slow tests run with `make test-slow`.
test: $(STAMP)
	@mkdir -p reports
	$(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) --junitxml=reports/junit.xml $(PYTEST_ARGS); \
	status=$$?; \
	$(PY) -m tools.reliability_report reports/junit.xml --out reports/reliability.md; \
	exit $$status

## Regenerate the README's reliability table from the last `make test` report.
reliability-table: $(STAMP)
	$(PY) -m tools.reliability_report reports/junit.xml --readme README.md

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check jaxseq experiments tests benchmarks
	$(VENV)/bin/ruff format --check jaxseq experiments tests benchmarks

## The main job: the default experiments on real data, one results table.
run: $(STAMP)
	$(PY) -m experiments.run_all

## The full-size configurations of every experiment.
experiments: $(STAMP)
	$(PY) -m experiments.run_all --full

## Mutation testing (on demand, never in CI or `make test`): every mutant of losses and
## masks, a seeded sample of the recurrence and the fused engine; writes the
## "$(MUTANTS_LABEL)" section of reports/mutants.md. Long: run it in the background.
## Interrupted, it resumes where it stopped (same label); MUTANTS_ARGS=--fresh starts over.
mutants: $(DEV_STAMP)
	nice -n 19 $(PY) -m tools.mutants --label $(MUTANTS_LABEL) $(MUTANTS_ARGS)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,dev]"
	touch $(DEV_STAMP)

## Speed and memory against PyTorch and flax, side by side.
bench: $(STAMP)
	$(PY) -m benchmarks.rnn_train_step

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs reports
