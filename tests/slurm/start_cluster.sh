#!/usr/bin/env bash
# Start a single-node SLURM cluster (munged + slurmctld + slurmd) on localhost.
# Usage (as root): tests/slurm/start_cluster.sh [STATE_DIR]   (default /tmp/saeflow-slurm)
# Idempotent: returns early if the cluster in STATE_DIR already answers;
# otherwise stops any leftovers and starts from empty job state.
# Then: source STATE_DIR/env.sh   (exports SLURM_CONF)
set -euo pipefail

STATE=$(mkdir -p "${1:-/tmp/saeflow-slurm}" && cd "${1:-/tmp/saeflow-slurm}" && pwd)
export SLURM_CONF="$STATE/slurm.conf"
NODE=$(hostname -s)

finish() {  # make the /etc link, write and print env.sh, exit 0
    # snakemake-executor-plugin-slurm-jobstep (0.6.1) strips SLURM_CONF before the
    # srun inside each job, so srun only finds the config at the built-in path.
    mkdir -p /etc/slurm
    ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
    echo "export SLURM_CONF=$SLURM_CONF" >"$STATE/env.sh"
    cat "$STATE/env.sh"
    exit 0
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null || true; }

# Already up (possibly busy with jobs): leave it alone. The pid check comes
# first because sinfo takes ~9 s to give up when no slurmctld listens.
if [[ -f $STATE/slurmctld.pid ]] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null \
    && [[ $(node_state) =~ ^(idle|mix|alloc|comp)$ ]]; then
    finish
fi

# --- install -----------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    # policy-rc.d exit 101 stops the maintainer scripts from starting daemons.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT  # also on a failed install
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
    if [[ -n $(trap -p EXIT) ]]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

if [[ -e /etc/slurm/slurm.conf && ! -L /etc/slurm/slurm.conf ]]; then
    echo "/etc/slurm/slurm.conf exists and is not our link; refusing to replace it" >&2
    exit 1
fi

# --- config ------------------------------------------------------------------
# Not healthy: stop whatever is left of an earlier run and start from empty state,
# so stale jobs from a killed run cannot keep the node busy.
"$(dirname "$0")/stop_cluster.sh" "$STATE"
rm -rf "$STATE/spool" "$STATE/log"
mkdir -p "$STATE"/{munge,spool/ctld,spool/d,log,dev}
chmod 755 "$STATE" "$STATE/munge"   # munged rejects group/other-writable dirs
# Two fake GPUs, for scheduling only (gres/gpu needs File= pointing at a device): one per core
# of the CI machine, so the toy's GPU steps run two at a time, as they do locally.
ln -sf /dev/null "$STATE/dev/nvidia0"
ln -sf /dev/null "$STATE/dev/nvidia1"

mem_mb=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
real_mem=$(( mem_mb * 3 / 4 ))   # slurmd drains the node if RealMemory exceeds what it sees

cat >"$SLURM_CONF" <<EOF
ClusterName=saeflow
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket.2
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/spool/slurmctld.pid
SlurmdPidFile=$STATE/spool/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job lacking --mem gets the whole node and jobs run one at a time.
DefMemPerCPU=1000
# squeue (no sacct here) must keep finished jobs visible for snakemake's status polls.
MinJobAge=600
ReturnToService=2
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$real_mem Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

cat >"$STATE/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=$STATE/dev/nvidia[0-1]
EOF

if [[ ! -s "$STATE/munge/munge.key" ]]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 400 "$STATE/munge/munge.key"

# --- daemons -----------------------------------------------------------------
# Run each in the foreground under setsid so $! is the daemon itself.
start() {  # name, command...
    local name=$1; shift
    setsid "$@" >"$STATE/log/$name.out" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
}

start munged munged --foreground --force \
    --key-file="$STATE/munge/munge.key" \
    --socket="$STATE/munge/munge.socket.2" \
    --pid-file="$STATE/munge/munged.pid" \
    --seed-file="$STATE/munge/munged.seed"
for _ in $(seq 50); do [[ -S $STATE/munge/munge.socket.2 ]] && break; sleep 0.2; done

start slurmctld slurmctld -D -f "$SLURM_CONF"
start slurmd slurmd -D -f "$SLURM_CONF"

ours_alive() {
    local n
    for n in munged slurmctld slurmd; do kill -0 "$(cat "$STATE/$n.pid")" 2>/dev/null || return 1; done
}
for _ in $(seq 60); do
    # A daemon of another cluster holding the ports would answer sinfo instead of ours.
    ours_alive || break
    if [[ $(node_state) == idle ]] && sleep 1 && ours_alive; then finish; fi
    sleep 1
done
echo "slurm node $NODE not idle after 60 s, or a daemon died; logs in $STATE/log" >&2
tail -n 20 "$STATE"/log/*.out >&2 || true
"$(dirname "$0")/stop_cluster.sh" "$STATE"
exit 1
