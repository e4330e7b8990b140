#!/usr/bin/env bash
# The GPU check (issue 27): saeflow on one CUDA device, in one script, within 10 minutes on an
# H100. Two steps, on two machines:
#
#   bench/device.sh download WHEELS    where a package registry is reachable: every package
#                                      of the project's venv but torch, its CUDA wheels and
#                                      triton, as wheels in WHEELS (plus WHEELS/requirements.lock)
#   bench/device.sh run WHEELS [OUT]   on the GPU machine (CUDA PyTorch installed, no network):
#                                      installs WHEELS offline, then
#                                      1. python -m bench scale --device cuda (gemma-2-2b widths,
#                                         random weights): absolute extraction tokens/s, seconds
#                                         per AtP pair, peak GPU memory per stage;
#                                      2. the toy DAG's gpu rules (and what they need) with
#                                         --resources gpu=1 --config device=cuda;
#                                      and writes OUT/device.json (default results/device):
#                                      both, summarised by python -m bench.device.
#   (make device-check WHEELS=... runs the second.)
#
# Environment: PYTHON (the interpreter with CUDA torch; default python3; download: the
# project's .venv/bin/python), PY_VERSION (download for another Python, e.g. 3.12:
# manylinux x86_64 wheels only), SCALE_TIMEOUT (s, default 330), DAG_TIMEOUT (s, default
# 210), THREADS (torch CPU threads, default 8), CORES (Snakemake cores, default all).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    sed -n '2,24p' "$0" >&2
    exit 2
}

GPU_RULES=(train_model train_sae evaluate_saes extract encode ablate_categories patch_resid
           patch_estimate patch_verify patch_exact patch_circuit)

download() {
    local wheels=$1 py=${PYTHON:-.venv/bin/python}
    mkdir -p "$wheels"
    # torch comes with the GPU machine (its CUDA build); nvidia-* and triton are its CUDA deps
    "$py" -m pip list --format=freeze --exclude-editable \
        | grep -viE '^(torch|triton|nvidia-[a-z0-9-]+|saeflow|pip)==' > "$wheels/requirements.lock"
    local platform=()
    if [[ -n ${PY_VERSION:-} ]]; then
        platform=(--only-binary=:all: --implementation cp --python-version "$PY_VERSION"
                  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
    fi
    "$py" -m pip download --no-deps --prefer-binary --dest "$wheels" "${platform[@]}" \
        -r "$wheels/requirements.lock"
    du -sh "$wheels"
}

install_offline() {
    local wheels=$1 py=${PYTHON:-python3}
    "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else
              "no CUDA device: torch " + torch.__version__ + " sees none")' >&2
    # into the interpreter's own venv if it has one, else a venv that sees its torch
    if "$py" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
        PY=$py
    else
        "$py" -m venv --system-site-packages .venv-device
        PY=.venv-device/bin/python
    fi
    "$PY" -m pip install -q --no-index --find-links "$wheels" --no-deps \
        -r "$wheels/requirements.lock"
    "$PY" -c 'import torch, transformer_lens, sae_lens, snakemake
print("torch", torch.__version__, "on", torch.cuda.get_device_name())'
}

run() {
    local wheels=$1 out=${2:-results/device}
    install_offline "$wheels"
    local bin
    bin=$(dirname "$PY")
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1 \
        TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
    mkdir -p "$out"
    echo "[device] scale benchmark on cuda -> $out/bench/scale.json" >&2
    timeout "${SCALE_TIMEOUT:-330}" "$PY" -m bench scale --device cuda --threads "${THREADS:-8}" \
        --out "$out/bench" > "$out/scale.log" 2>&1 || echo "[device] scale: exit $?" >&2
    echo "[device] toy DAG, gpu rules, on cuda -> $out/dag.log" >&2
    local t0 rc
    t0=$(date +%s)
    set +e
    timeout "${DAG_TIMEOUT:-210}" "$bin/snakemake" --cores "${CORES:-all}" --resources gpu=1 \
        --config device=cuda --until "${GPU_RULES[@]}" > "$out/dag.log" 2>&1
    rc=$?
    set -e
    "$PY" -m bench.device --scale "$out/bench/scale.json" --dag-log "$out/dag.log" \
        --dag-rc "$rc" --dag-s "$(( $(date +%s) - t0 ))" --out "$out/device.json"
}

case ${1:-} in
    download) [[ $# -eq 2 ]] || usage; download "$2" ;;
    run) [[ $# -ge 2 ]] || usage; run "$2" "${3:-}" ;;
    *) usage ;;
esac
