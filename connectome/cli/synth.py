"""Write a synthetic EM volume with complete ground truth (raw, labels, tissue, synapses, skeletons)."""

from __future__ import annotations

import os

from connectome.cli.arg_types import positive_float, positive_int
from connectome.cli.main import print_result
from connectome.core.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (zarr volumes + ground_truth/)")
    parser.add_argument("--shape", nargs=3, type=positive_int, metavar=("Z", "Y", "X"), default=(64, 256, 256),
                        help="volume shape in voxels (default 64 256 256)")
    parser.add_argument("--voxel-size", nargs=3, type=positive_float, metavar=("Z", "Y", "X"), default=(8.0, 8.0, 8.0),
                        help="voxel size in nm (default 8 8 8; serial sections e.g. 40 4 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same volume")
    parser.add_argument("--defects", default="", metavar="LIST",
                        help="comma-separated section defects to add: shifts, missing, drift (default none)")
    parser.add_argument("--chunk-shape", nargs=3, type=positive_int, metavar=("Z", "Y", "X"), default=(32, 128, 128),
                        help="zarr chunk shape (clipped to the volume)")
    parser.add_argument("--overwrite", action="store_true", help="replace volumes that already exist in OUT_DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    from connectome.synth import Defects, generate
    from connectome.synth.volume import VOLUMES

    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        raise UserError(f"{args.out_dir}: exists and is not a folder")
    held = [n for n in (*VOLUMES, "ground_truth") if os.path.exists(os.path.join(args.out_dir, n))]
    if held and not args.overwrite:  # another seed (or options) would replace them without a word
        raise UserError(f"{args.out_dir}: holds {', '.join(held)} already; expected an empty or new folder "
                        f"(give --overwrite to replace them)")
    try:
        defects = Defects.from_names(args.defects)
    except ValueError as e:
        raise UserError(f"--defects: {e}") from None
    vol = generate(tuple(args.shape), tuple(args.voxel_size), seed=args.seed, defects=defects)
    paths = vol.save(args.out_dir, chunk_shape=tuple(args.chunk_shape), overwrite=args.overwrite)
    summary = {
        **paths,
        "shape": list(vol.shape),
        "voxel_size": list(vol.voxel_size),
        "seed": vol.seed,
        "n_ids": len(vol.classes),
        "n_synapses": int(len(vol.synapses)),
        "seconds": round(vol.timings.get("total_s", 0.0), 2),
    }
    lines = [f"synthetic volume {tuple(vol.shape)} at {tuple(vol.voxel_size)} nm, seed {vol.seed}: "
             f"{len(vol.classes)} ids, {len(vol.synapses)} synapses ({summary['seconds']} s)"]
    lines += [f"  {name:15s} {path}" for name, path in paths.items()]
    print_result(args, summary, "\n".join(lines))
    return 0
