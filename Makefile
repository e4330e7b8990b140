# Two entry points for a fresh machine: `make run` (the toy DAG) and `make test`.
VENV  ?= .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.saeflow-installed
CORES ?= all
# GPU jobs at once: one per CUDA device. Without one the "gpu" steps run on the CPU cores, and
# a gpu=1 cap would only queue CPU work behind itself, so the cores alone limit them.
GPUS  ?= $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU')
GPU_LIMIT := $(if $(filter-out 0,$(GPUS)),--resources gpu=$(GPUS),)

.PHONY: run test test-fast lint bench clean device-check

run: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) $(GPU_LIMIT)

test: $(STAMP)
	$(PY) -m pytest -q --durations=12

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not slurm"

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile workflow

bench: $(STAMP)
	$(PY) -m bench

# On a machine with one GPU, CUDA PyTorch installed and no network: install the wheels that
# `bench/device.sh download DIR` fetched elsewhere, run the scale benchmark and the toy DAG's
# gpu rules on CUDA, write results/device/device.json (bench/device.sh says more).
WHEELS ?= wheels
device-check:
	bash bench/device.sh run $(WHEELS) results/device

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
