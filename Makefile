# Two entry points for a fresh machine: `make run` (the toy DAG) and `make test`.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.saeflow-installed
CORES ?= all

.PHONY: run test test-fast lint bench clean

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --resources gpu=1

test: $(STAMP)
	$(PY) -m pytest -q --durations=12

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not slurm"

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile workflow

bench: $(STAMP)
	$(PY) -m bench

# torch first and pinned: an unpinned torch would pull several GB of CUDA packages.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf results/toy .snakemake
