# jaxseq: every target creates and uses its own virtual environment in .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The exact versions tested: every install here (and so CI's) goes through them.
CONSTRAINTS := constraints.txt
PIP_INSTALL := $(PY) -m pip install --quiet -c $(CONSTRAINTS)
# What the test suite, `make run`, `make experiments` and `make bench` import.
EXTRAS := test,train,nnx,experiments,docs
# Data-only packages, installed without their (heavy, unused) dependencies.
DATA_PKGS := aeon==1.6.0 turkish-treebanks==1.0.0
PYTEST_ARGS ?=
# Test processes: the suite compiles thousands of XLA programs; two workers use both
# cores of the CI machine and halve what one process holds in memory.
PYTEST_WORKERS ?= 2
# `make mutants`: the section of reports/mutants.md to (re)write, and extra tools.mutants flags.
# `make run` / `make experiments` start over each time (their runs/ folders are replaced);
# RUN_ARGS=--resume continues the last run instead.
RUN_ARGS ?= --overwrite
MUTANTS_LABEL ?= latest
MUTANTS_ARGS ?=
DEV_STAMP := $(VENV)/.dev-installed-stamp

.PHONY: install test test-slow lint run experiments bench clean reliability-table mutants

$(STAMP): pyproject.toml Makefile $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PIP_INSTALL) -e ".[$(EXTRAS)]"
	$(PIP_INSTALL) --no-deps $(DATA_PKGS)
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

## Lint, format check and type check (mypy's settings: [tool.mypy] in pyproject.toml).
lint: $(STAMP)
	$(VENV)/bin/ruff check jaxseq experiments tests benchmarks tools
	$(VENV)/bin/ruff format --check jaxseq experiments tests benchmarks tools
	$(VENV)/bin/mypy

## The main job: the default experiments on real data, one results table.
run: $(STAMP)
	$(PY) -m experiments.run_all $(RUN_ARGS)

## The full-size configurations of every experiment.
experiments: $(STAMP)
	$(PY) -m experiments.run_all --full --seeds 3 $(RUN_ARGS)

## Mutation testing (on demand, never in CI or `make test`): every mutant of losses and
## masks, a seeded sample of the recurrence and the fused engine; writes the
## "$(MUTANTS_LABEL)" section of reports/mutants.md. Long: run it in the background.
## Interrupted, it resumes where it stopped (same label); MUTANTS_ARGS=--fresh starts over.
mutants: $(DEV_STAMP)
	nice -n 19 $(PY) -m tools.mutants --label $(MUTANTS_LABEL) $(MUTANTS_ARGS)

$(DEV_STAMP): $(STAMP)
	$(PIP_INSTALL) -e ".[$(EXTRAS),dev]"
	touch $(DEV_STAMP)

## Speed and memory against PyTorch and flax, side by side.
bench: $(STAMP)
	$(PY) -m benchmarks.rnn_train_step

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache runs site
	rm -rf reports/junit.xml reports/reliability.md reports/mutants-work

## The documentation into site/ (open site/index.html): the API reference of every public
## module (pdoc, from the docstrings) and the guides (README.md, docs/*.md). Any pdoc
## warning, unresolved cross-reference or broken link fails it (tools/build_docs.py).
.PHONY: docs
docs: $(STAMP)
	$(PY) -m tools.build_docs --out site
