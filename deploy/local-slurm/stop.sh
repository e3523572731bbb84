#!/usr/bin/env bash
# Cancel every job, then stop slurmd, slurmctld and munged started by start.sh (leaves SLURM installed).
set -uo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # alive, port_open

# Jobs outlive slurmd: cancel them while the controller still answers, and wait for them to go.
if port_open 6817 && command -v scancel >/dev/null; then
    scancel --full --signal=KILL -u root >/dev/null 2>&1 || true
    scancel -u root >/dev/null 2>&1 || true
    for _ in $(seq 50); do
        [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.2
    done
fi

stop() {  # stop PIDFILE NAME
    local pid
    alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid="$(tr -dc 0-9 < "$1")"
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 50); do alive "$1" "$2" || break; sleep 0.1; done
    alive "$1" "$2" && kill -KILL "$pid" 2>/dev/null
    rm -f "$1"
}
stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
stop /run/munge/munged.pid munged
echo "local-slurm: stopped"
