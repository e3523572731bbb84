#!/usr/bin/env bash
# One lent-GPU session, run on the device machine in the repository root (`bash deploy/gpu/prepare.sh` first,
# here; then `run` with carry [".gpu"] and the command `bash deploy/gpu/session.sh`):
#   1. installs the wheels of .gpu/whl (the device's Python lacks dask, zarr, ...);
#   2. fine-tunes `fib-10nm` and `sstem` from their shipped weights on the GPU (their shipped recipes, with a
#      larger batch and the batches made by --loader-workers processes), each for a fixed number of minutes;
#   3. measures U-Net inference (bf16) and the FFN canvas at several object batch sizes on the GPU;
#   4. packs the trained models, their logs and the measurements into $OUT/session.tgz.
# Every step runs even when an earlier one failed; each prints its exit status. Back here, give each trained
# model its edge classifier and score it (README, "Training on a lent GPU").
#
# Settings (environment): FIB_MIN, SSTEM_MIN (training minutes each, default 3), BATCH (8), WORKERS (loader
# processes, 12), FFN_MIN (train `ffn-fib-10nm`'s recipe with --arch reference for this many minutes; default 0:
# skipped), DEVICE (cuda), PY (python3), SPEED (1: measure throughput; 0: skip), SPEED_SHAPE (the FFN canvas
# volume, "64 128 128"), DATA (.gpu/data).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?set OUT to the folder whose files come back}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
FIB_MIN=${FIB_MIN:-3}
SSTEM_MIN=${SSTEM_MIN:-3}
FFN_MIN=${FFN_MIN:-0}
BATCH=${BATCH:-8}
WORKERS=${WORKERS:-12}
SPEED=${SPEED:-1}
D=${DATA:-.gpu/data}
W=$(mktemp -d /tmp/gpu-session.XXXXXX)
export PYTHONUNBUFFERED=1

if [ -d .gpu/whl ] && ls .gpu/whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$W/site" \
        .gpu/whl/*.whl || { echo "session: installing .gpu/whl failed"; exit 3; }
    export PYTHONPATH="$W/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -f "$D/medulla.npz" ] || { echo "session: $D/medulla.npz missing: run deploy/gpu/prepare.sh here and carry .gpu"; exit 3; }

step() {  # step NAME COMMAND...: run it, its output to $W/NAME.log, and say how it ended
    local name=$1 start=$SECONDS rc
    shift
    echo "== $name: start $(date -u +%H:%M:%S)"
    "$@" > "$W/$name.log" 2>&1
    rc=$?
    echo "== $name: rc $rc after $((SECONDS - start)) s"
    tail -n 4 "$W/$name.log"
}

C=("$PY" -m connectome.cli.main)
step machine bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; \
    $PY -c 'import torch, numpy; print(torch.__version__, numpy.__version__, torch.cuda.is_available())'"

step fib "${C[@]}" train affinities \
    --raw "$D/medulla.npz#raw[0:100]" --labels "$D/medulla.npz#neuron_ids[0:100]" \
    --raw "$D/gala.npz#train_raw" --labels "$D/gala.npz#train_gt" \
    --val-raw "$D/medulla.npz#raw[100:125]" --val-labels "$D/medulla.npz#neuron_ids[100:125]" \
    --eval-raw "$D/gala.npz#test_raw" --eval-labels "$D/gala.npz#test_gt" \
    --name fib-10nm-gpu --out "$W/fib" --arch iso --voxel-size 10 10 10 --patch 48 48 48 \
    --batch-size "$BATCH" --iterations 1000000 --max-minutes "$FIB_MIN" --val-every "${FIB_VAL:-1000}" \
    --seed 41 --threads 4 --device "$DEVICE" --loader-workers "$WORKERS" --init fib-10nm --lr 0.0005 --json

step sstem "${C[@]}" train affinities \
    --raw "$D/cremi.npz#raw[0:40]" --labels "$D/cremi.npz#neuron_ids[0:40]" \
    --section-raw "$D/isbi.npz#train_raw[0:25]" --section-labels "$D/isbi.npz#derived_train_cells2d[0:25]" \
    --val-raw "$D/cremi.npz#raw[40:50]" --val-labels "$D/cremi.npz#neuron_ids[40:50]" \
    --name sstem-gpu --out "$W/sstem" --arch aniso --voxel-size 40 4 4 --patch 12 160 160 \
    --batch-size "$BATCH" --iterations 1000000 --max-minutes "$SSTEM_MIN" --val-every "${SSTEM_VAL:-500}" \
    --seed 42 --threads 4 --device "$DEVICE" --loader-workers "$WORKERS" --init sstem --lr 0.0005 --json

if [ "$FFN_MIN" != 0 ]; then
    "$PY" -c "import numpy as np; d = np.load('$D/medulla.npz'); s = np.s_[75:100, 61:189, 61:189]; \
np.savez('$W/val128.npz', raw=d['raw'][s], neuron_ids=d['neuron_ids'][s])"
    step ffn "${C[@]}" train ffn \
        --raw "$D/medulla.npz#raw[0:75]" --labels "$D/medulla.npz#neuron_ids[0:75]" \
        --raw "$D/gala.npz#train_raw" --labels "$D/gala.npz#train_gt" \
        --val-raw "$W/val128.npz#raw" --val-labels "$W/val128.npz#neuron_ids" --name ffn-fib-10nm-gpu \
        --out "$W/ffn" --arch reference --voxel-size 10 10 10 --threads 4 --device "$DEVICE" \
        --batch-size 32 --iterations 1000000 --val-every "${FFN_VAL:-2000}" --max-minutes "$FFN_MIN" --json
fi

if [ "$SPEED" != 0 ]; then
    step unet_speed "$PY" benchmarks/unet_inference.py --no-cpu --runs 5 --batch 4 --models fib-10nm sstem synthetic \
        --out "$W/unet_inference_gpu.md"
    step ffn_speed "$PY" benchmarks/ffn_canvas_speed.py --device "$DEVICE" --batches 1 8 32 --precision bfloat16 \
        --shape ${SPEED_SHAPE:-64 128 128} --threads 4 --out "$W/ffn_canvas_speed_gpu.md"
fi

rm -rf "$W/site"
tar -czf "$OUT/session.tgz" -C "$W" . && echo "session: wrote $OUT/session.tgz ($(du -h "$OUT/session.tgz" | cut -f1))"
