"""Train a model: `connectome train affinities --raw ADDR --labels ADDR ... --name NAME --out DIR`.

Addresses may end in a z range, `ADDR[z0:z1]`, to split one volume into training and validation
sections; training data that overlaps the validation or evaluation data is refused.
"""

from __future__ import annotations

import shlex
import sys

from connectome.cli.main import print_result

MODELS = ("affinities",)


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="model", required=True, metavar="MODEL")
    p = sub.add_parser("affinities", help="the affinity U-Net used by `connectome segment`",
                       description=__doc__)
    p.add_argument("--raw", action="append", required=True, metavar="ADDR",
                   help="training raw volume (uint8); repeat for several volumes")
    p.add_argument("--labels", action="append", required=True, metavar="ADDR",
                   help="object ids for the --raw of the same position (0 = boundary)")
    p.add_argument("--val-raw", metavar="ADDR", help="validation raw (never trained on)")
    p.add_argument("--val-labels", metavar="ADDR", help="validation labels")
    p.add_argument("--eval-raw", action="append", default=[], metavar="ADDR",
                   help="extra held-out raw scored once with the best checkpoint (not used to select it)")
    p.add_argument("--eval-labels", action="append", default=[], metavar="ADDR")
    p.add_argument("--name", required=True, help="model name: writes OUT/NAME.pt and OUT/NAME.json")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (weights, json, loss curve, log)")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--patch", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="input patch shape (default 48 48 48 for iso, 12 160 160 for aniso)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--arch", choices=("iso", "aniso"), default="iso",
                   help="iso: 2x2x2 downsampling, 3x3x3 kernels; aniso: 1x2x2 downsampling for serial sections")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="nm; recorded in the model (default: from the raw volume)")
    p.add_argument("--labels-2d", action="store_true",
                   help="labels are per section only: no loss on z affinities; at inference the z affinity "
                        "is derived from the in-plane ones")
    p.add_argument("--no-aux", dest="aux", action="store_false",
                   help="train without the long-range affinity outputs")
    p.add_argument("--norm", choices=("batch", "none"), default="batch",
                   help="BatchNorm while training (folded into the convolutions for inference), or none")
    p.add_argument("--init", metavar="MODEL",
                   help="start from this model's weights (a shipped name or a .pt path with the same "
                        "architecture); its input normalisation is kept")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--val-every", type=int, default=250, metavar="N")
    p.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="stop after M minutes of wall time (the learning-rate decay follows the clock)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--install", action="store_true",
                   help="copy the best weights + json into connectome/models/weights/ (a shipped model)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _command_line() -> str:
    """The command as typed, when run from the `connectome` entry point (or `python -m connectome.cli`)."""
    argv = sys.argv[1:]
    if argv[:1] != ["train"]:
        return "(called from Python, not the command line)"
    return "connectome " + " ".join(shlex.quote(a) for a in argv)


def run(args) -> int:
    from connectome.affinity.training import TrainSettings, train

    patch = tuple(args.patch) if args.patch else ((12, 160, 160) if args.arch == "aniso" else (48, 48, 48))
    settings = TrainSettings(
        raw=args.raw, labels=args.labels, name=args.name, out=args.out,
        val_raw=args.val_raw, val_labels=args.val_labels,
        eval_raw=args.eval_raw, eval_labels=args.eval_labels,
        iterations=args.iterations, batch_size=args.batch_size, patch=patch, seed=args.seed,
        device=args.device, arch=args.arch,
        voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
        labels_2d=args.labels_2d, aux=args.aux, norm=args.norm, lr=args.lr, init=args.init,
        val_every=args.val_every, max_minutes=args.max_minutes,
        threads=args.threads, install=args.install,
        command=_command_line(),
    )
    quiet = getattr(args, "json", False)
    summary = train(settings, log=(lambda *a: print(*a, file=sys.stderr, flush=True)) if quiet else
                    (lambda *a: print(*a, flush=True)))
    v = summary["validation"]
    human = (f"trained {summary['name']} in {summary['wall_time_s'] / 60:.1f} min: loss "
             f"{summary['first_loss']:.4f} -> {summary['final_loss']:.4f}"
             + (f"; best validation VOI {v['voi']:.3f} (split {v['voi_split']:.3f}, merge {v['voi_merge']:.3f}) "
                f"at iteration {v['iteration']}, threshold {v['threshold']}" if v else "")
             + f"\nweights: {summary['weights']}"
             + (f" (installed as {summary['installed']})" if summary["installed"] else ""))
    print_result(args, summary, human)
    return 0
