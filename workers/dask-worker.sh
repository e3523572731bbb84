#!/usr/bin/env bash
# Start one Dask worker for connectome: `workers/dask-worker.sh tcp://SCHEDULER:8786 [dask worker options]`.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 SCHEDULER_ADDRESS [dask worker options]" >&2
    exit 2
fi
# glibc's steady-state malloc thresholds (see connectome/cluster/worker_env.py); values already set win
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-33554432}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-67108864}"
# no memory pause or spill (connectome's tasks write their arrays to storage; a paused worker only waits); values
# already set win
export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE="${DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE:-False}"
export DASK_DISTRIBUTED__WORKER__MEMORY__SPILL="${DASK_DISTRIBUTED__WORKER__MEMORY__SPILL:-False}"
exec "${PYTHON:-python3}" -m distributed.cli.dask_worker "$@" --preload connectome.cluster.preload
