#!/usr/bin/env bash
# Run here (on the development machine, in the repository root) before a lent-GPU session: writes `.gpu/`
# (ignored by git, carried to the device machine by `run`'s `carry: [".gpu"]`):
#   .gpu/whl/   wheels of what the device's Python 3.12 lacks (deploy/gpu/requirements-device.txt);
#   .gpu/data/  the real training and validation volumes, compressed (the device machine cannot read
#               ../shared): medulla z 0-124, the gala crops, ISBI 2012 train and the CREMI crop in its
#               recovered section order. Drosophila VNC stack 1 is left out: with it the working tree
#               would pass the 64 MiB a device call carries.
# Usage: bash deploy/gpu/prepare.sh [PYTHON_VERSION]   (default 3.12, the device's; 3.11 for a rehearsal here)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${1:-3.12}
SHARED=${SHARED:-../shared/data}
PY=${PY:-.venv/bin/python}
EXCLUDE=$(git rev-parse --git-path info/exclude)
grep -qx '/.gpu/' "$EXCLUDE" 2>/dev/null || { mkdir -p "$(dirname "$EXCLUDE")"; echo '/.gpu/' >> "$EXCLUDE"; }
rm -rf .gpu/whl && mkdir -p .gpu/whl .gpu/data
echo "$PYVER" > .gpu/PYVER  # session.sh refuses wheels of another Python before installing them
grep -v '^#' deploy/gpu/requirements-device.txt > .gpu/requirements.txt
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .gpu/whl -r .gpu/requirements.txt
"$PY" benchmarks/cremi_section_order.py --input "$SHARED/cremi_sstem_crop/cremi_train.npz" --out .gpu/cremi_full.npz
"$PY" - "$SHARED" <<'EOF'
import sys
import numpy as np
shared = sys.argv[1]
def pack(name, source, keys):
    with np.load(source) as f:
        np.savez_compressed(f".gpu/data/{name}.npz", **{k: f[k] for k in keys})
pack("medulla", f"{shared}/flyem_medulla_fib_train/medulla_train.npz", ["raw", "neuron_ids"])
pack("gala", f"{shared}/gala_fib_crops/gala_fib.npz", ["train_raw", "train_gt", "test_raw", "test_gt"])
pack("isbi", f"{shared}/isbi2012/isbi2012.npz", ["train_raw", "derived_train_cells2d"])
pack("cremi", ".gpu/cremi_full.npz", ["raw", "neuron_ids"])
EOF
rm -f .gpu/cremi_full.npz
du -sh .gpu/whl .gpu/data
tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | du -cb --files0-from=- | tail -n 1 | cut -f1)
echo "working tree that travels: $tree bytes (tracked and untracked, not ignored) + .gpu $(du -sb .gpu | cut -f1) bytes (limit 67108864)"
