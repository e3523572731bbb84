#!/usr/bin/env bash
# Outputs of two versions byte for byte: `benchmarks/identical_outputs.sh OLD_TREE NEW_TREE`
# (e.g. OLD_TREE from `git worktree add /tmp/old 78f8303`). Segments the demo volume (8 blocks) and
# the gala test crop (27 blocks, fib-10nm) with each and compares affinities, fragments, segmentation.
set -u
OLD=${1:?old tree}; NEW=${2:?new tree}
PY=${PY:-$NEW/.venv/bin/python}
OUT=/tmp/identical; rm -rf $OUT; mkdir -p $OUT
GALA=$(cd "$NEW/.." && pwd)/shared/data/gala_fib_crops/gala_fib.npz
for side in old new; do
  root=$([ $side = old ] && echo "$OLD" || echo "$NEW")
  ( cd $root && PYTHONPATH=$root $PY -m connectome.cli demo --out $OUT/$side-demo --no-progress --json > $OUT/$side-demo.json 2>$OUT/$side-demo.err )
  ( cd $root && PYTHONPATH=$root $PY -m connectome.cli segment "$GALA#test_raw" $OUT/$side-gala --model fib-10nm \
      --voxel-size 10 10 10 --block-shape 24 48 96 --no-progress --json > $OUT/$side-gala.json 2>$OUT/$side-gala.err )
done
$PY - <<'PY'
from pathlib import Path
out = Path("/tmp/identical")
for case in ("demo", "gala"):
    for ds in ("affinities", "fragments", "segmentation"):
        a, b = out / f"old-{case}" / ds, out / f"new-{case}" / ds
        fa = {str(p.relative_to(a)): p.read_bytes() for p in a.rglob("*") if p.is_file()}
        fb = {str(p.relative_to(b)): p.read_bytes() for p in b.rglob("*") if p.is_file()}
        same = fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)
        print(f"{case:5s} {ds:13s} files {len(fa):4d} / {len(fb):4d}  byte-identical: {same}")
PY
