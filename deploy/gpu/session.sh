#!/usr/bin/env bash
# One lent-GPU session, run on the device machine in the repository root (`bash deploy/gpu/prepare.sh` first,
# here; then `run` with carry [".gpu"] and the command `bash deploy/gpu/session.sh`):
#   1. installs the wheels of .gpu/whl (the device's Python lacks dask, zarr, ...);
#   2. fine-tunes `fib-10nm` and `sstem` from their shipped weights (or FIB_INIT / SSTEM_INIT) on the GPU (their shipped recipes, with a
#      larger batch and the batches made by --loader-workers processes), each for a fixed number of minutes;
#   3. measures U-Net inference (bf16) and the FFN canvas at several object batch sizes on the GPU;
#   4. packs the trained models, their logs and the measurements into $OUT/session.tgz, again after every step,
#      so what was done comes back even when the call is cut off.
# Every step runs even when an earlier one failed, each under `timeout` for what is left of DEADLINE seconds
# (default 560: a device command may run 600), and each prints its exit status (124: it ran out of time).
# Back here, give each trained model its edge classifier and score it (README, "Training on a GPU, and a
# lent-GPU session").
#
# Settings (environment): FIB_MIN, SSTEM_MIN (training minutes each, default 3 and 2.5; 0 skips it), BATCH (8), WORKERS
# (loader processes, 12; fewer when /dev/shm is small), FFN_MIN (train `ffn-fib-10nm`'s recipe with --arch
# reference for this many minutes; default 0: skipped; its validation canvas takes minutes more, so lower
# FIB_MIN / SSTEM_MIN to make room), FFN_INIT (continue that FFN instead, e.g. ffn-fib-10nm: `train ffn --init`),
# FIB_BASE / SSTEM_BASE (train a wider network, widened from the shipped one: --base-channels; default: the shipped
# width), FIB_INIT / SSTEM_INIT (the weights to start from: a shipped
# name or a .pt path; default the shipped model), DEADLINE (560), DEVICE (cuda), PY (python3), SPEED (1: measure
# throughput; 0: skip), SPEED_SHAPE (the FFN canvas volume, "64 128 128"), DATA (.gpu/data).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?set OUT to the folder whose files come back}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
FIB_MIN=${FIB_MIN:-3}
SSTEM_MIN=${SSTEM_MIN:-2.5}
DEADLINE=${DEADLINE:-560}
FFN_MIN=${FFN_MIN:-0}
BATCH=${BATCH:-8}
WORKERS=${WORKERS:-12}
SPEED=${SPEED:-1}
D=${DATA:-.gpu/data}
FIB_WIDTH=(${FIB_BASE:+--base-channels "$FIB_BASE"})
SSTEM_WIDTH=(${SSTEM_BASE:+--base-channels "$SSTEM_BASE"})
W=$(mktemp -d /tmp/gpu-session.XXXXXX)
echo "session: working folder $W (a later call on the still-warm machine can start from $W/fib/fib-10nm-gpu.pt)"
export PYTHONUNBUFFERED=1

if [ -f .gpu/PYVER ]; then  # wheels are built for one Python: refuse before installing the wrong ones
    have=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    [ "$have" = "$(cat .gpu/PYVER)" ] || {
        echo "session: .gpu/whl holds wheels for Python $(cat .gpu/PYVER), $PY is $have: run deploy/gpu/prepare.sh $have"
        exit 3
    }
fi
if [ -d .gpu/whl ] && ls .gpu/whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$W/site" \
        .gpu/whl/*.whl || { echo "session: installing .gpu/whl failed"; exit 3; }
    export PYTHONPATH="$W/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -f "$D/medulla.npz" ] || { echo "session: $D/medulla.npz missing: run deploy/gpu/prepare.sh here and carry .gpu"; exit 3; }

pack() {  # everything so far into $OUT/session.tgz (written aside, then moved: never half a file)
    tar -czf "$OUT/.session.tgz" -C "$W" --exclude=./site . && mv "$OUT/.session.tgz" "$OUT/session.tgz"
}

step() {  # step NAME COMMAND...: run it under the time left, its output to $W/NAME.log; say how it ended
    local name=$1 start=$SECONDS rc left=$((DEADLINE - SECONDS))
    shift
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped, ${left} s left of the ${DEADLINE} s deadline"
        return
    fi
    echo "== $name: start $(date -u +%H:%M:%S), ${left} s left"
    timeout --kill-after=10 "$left" "$@" > "$W/$name.log" 2>&1
    rc=$?
    echo "== $name: rc $rc after $((SECONDS - start)) s"
    tail -n 4 "$W/$name.log"
    pack
}

C=("$PY" -m connectome.cli.main)
step machine bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; \
    df -h /dev/shm; ulimit -n; \
    $PY -c 'import torch, numpy; print(torch.__version__, numpy.__version__, torch.cuda.is_available())'"
# loader workers hand batches over in /dev/shm (about 23 MB a fib batch of 8, 59 MB an sstem one; 2 in flight
# per worker): with little of it, fewer workers, and none without it
shm_kb=$(df -k --output=avail /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ')
case "$shm_kb" in
    ''|*[!0-9]*) WORKERS=0; echo "session: no /dev/shm: --loader-workers 0" ;;
    *) if [ "$shm_kb" -lt $((WORKERS * 2 * 64 * 1024 + 1048576)) ]; then
           WORKERS=$(( shm_kb > 1048576 ? (shm_kb - 1048576) / (2 * 64 * 1024) : 0 ))
           echo "session: /dev/shm has ${shm_kb} kB free: --loader-workers $WORKERS"
       fi ;;
esac

# a training whose minutes are 0 is skipped (a second call that trains only the other, or measures only)
zero() { awk -v m="$1" 'BEGIN { exit !(m + 0 == 0) }'; }  # "0", "0.0": skip
zero "$FIB_MIN" || step fib "${C[@]}" train affinities \
    --raw "$D/medulla.npz#raw[0:100]" --labels "$D/medulla.npz#neuron_ids[0:100]" \
    --raw "$D/gala.npz#train_raw" --labels "$D/gala.npz#train_gt" \
    --val-raw "$D/medulla.npz#raw[100:125]" --val-labels "$D/medulla.npz#neuron_ids[100:125]" \
    --eval-raw "$D/gala.npz#test_raw" --eval-labels "$D/gala.npz#test_gt" \
    --name fib-10nm-gpu --out "$W/fib" --arch iso --voxel-size 10 10 10 --patch 48 48 48 \
    --batch-size "$BATCH" --iterations 1000000 --max-minutes "$FIB_MIN" --val-every "${FIB_VAL:-1000}" \
    --seed 41 --threads 4 --device "$DEVICE" --loader-workers "$WORKERS" --init "${FIB_INIT:-fib-10nm}" --lr 0.0005 "${FIB_WIDTH[@]}" --json

zero "$SSTEM_MIN" || step sstem "${C[@]}" train affinities \
    --raw "$D/cremi.npz#raw[0:40]" --labels "$D/cremi.npz#neuron_ids[0:40]" \
    --section-raw "$D/isbi.npz#train_raw[0:25]" --section-labels "$D/isbi.npz#derived_train_cells2d[0:25]" \
    --val-raw "$D/cremi.npz#raw[40:50]" --val-labels "$D/cremi.npz#neuron_ids[40:50]" \
    --name sstem-gpu --out "$W/sstem" --arch aniso --voxel-size 40 4 4 --patch 12 160 160 \
    --batch-size "$BATCH" --iterations 1000000 --max-minutes "$SSTEM_MIN" --val-every "${SSTEM_VAL:-500}" \
    --seed 42 --threads 4 --device "$DEVICE" --loader-workers "$WORKERS" --init "${SSTEM_INIT:-sstem}" --lr 0.0005 "${SSTEM_WIDTH[@]}" --json

FFN_NET=(--arch reference)  # FFN_INIT: continue that FFN (e.g. ffn-fib-10nm, `train ffn --init`) instead
[ -n "${FFN_INIT:-}" ] && FFN_NET=(--init "$FFN_INIT")
if [ "$FFN_MIN" != 0 ]; then
    "$PY" -c "import numpy as np; d = np.load('$D/medulla.npz'); s = np.s_[75:100, 61:189, 61:189]; \
np.savez('$W/val128.npz', raw=d['raw'][s], neuron_ids=d['neuron_ids'][s])"
    step ffn "${C[@]}" train ffn \
        --raw "$D/medulla.npz#raw[0:75]" --labels "$D/medulla.npz#neuron_ids[0:75]" \
        --raw "$D/gala.npz#train_raw" --labels "$D/gala.npz#train_gt" \
        --val-raw "$W/val128.npz#raw" --val-labels "$W/val128.npz#neuron_ids" --name ffn-fib-10nm-gpu \
        --out "$W/ffn" "${FFN_NET[@]}" --voxel-size 10 10 10 --threads 4 --device "$DEVICE" \
        --batch-size 32 --iterations 1000000 --val-every "${FFN_VAL:-2000}" --max-minutes "$FFN_MIN" --json
fi

if [ "$SPEED" != 0 ]; then
    step unet_speed "$PY" benchmarks/unet_inference.py --no-cpu --runs 5 --batch 4 --models fib-10nm sstem synthetic \
        --out "$W/unet_inference_gpu.md"
    step ffn_speed "$PY" benchmarks/ffn_canvas_speed.py --device "$DEVICE" --batches 1 8 32 --precision bfloat16 \
        --shape ${SPEED_SHAPE:-64 128 128} --threads 4 --out "$W/ffn_canvas_speed_gpu.md"
fi

pack && echo "session: wrote $OUT/session.tgz ($(du -h "$OUT/session.tgz" | cut -f1)) after $SECONDS s"
