#!/usr/bin/env bash
# Stop the daemons started by start_cluster.sh, by the pids recorded in STATE_DIR.
# Usage: tests/slurm/stop_cluster.sh [STATE_DIR]   (default /tmp/saeflow-slurm)
set -euo pipefail

[[ -d ${1:-/tmp/saeflow-slurm} ]] || exit 0
STATE=$(cd "${1:-/tmp/saeflow-slurm}" && pwd)
export SLURM_CONF="$STATE/slurm.conf"

alive() { kill -0 "$1" 2>/dev/null; }

# Cancel jobs while the controller is still up: a slurmstepd outlives slurmd
# and keeps retrying to report its job's end.
if [[ -f $STATE/slurmctld.pid ]] && alive "$(cat "$STATE/slurmctld.pid")"; then
    mapfile -t jobs < <(squeue -h -o %i -t PD,R,S,CG 2>/dev/null || true)
    if (( ${#jobs[@]} )); then
        scancel "${jobs[@]}" 2>/dev/null || true
        for _ in $(seq 20); do
            [[ -z $(squeue -h -o %i -t R,CG 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
fi

# SIGTERM all daemons at once (each takes 1-2 s to exit), wait up to 10 s, then SIGKILL.
pids=()
for name in slurmd slurmctld munged; do
    [[ -f $STATE/$name.pid ]] || continue
    pid=$(cat "$STATE/$name.pid")
    # The comm check guards against a stale pid file naming a reused pid.
    if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
        kill "$pid" 2>/dev/null || true
        pids+=("$pid")
    fi
    rm -f "$STATE/$name.pid"
done
for pid in "${pids[@]}"; do
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then
        echo "pid $pid ignored SIGTERM, sending SIGKILL" >&2
        kill -9 "$pid" 2>/dev/null || true
    fi
done

# Leftover job steps of this cluster (slurmd started them with our SLURM_CONF);
# kill each with its job's session.
for p in $(pgrep -x slurmstepd || true); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF"; then
        sid=$(ps -o sid= -p "$p" | tr -d ' ')
        echo "killing leftover slurmstepd $p (session $sid)" >&2
        pkill -9 -s "$sid" || true
    fi
done

# Drop the /etc/slurm/slurm.conf link start_cluster.sh made, if it is still ours.
if [[ $(readlink /etc/slurm/slurm.conf 2>/dev/null) == "$SLURM_CONF" ]]; then
    rm -f /etc/slurm/slurm.conf
fi
