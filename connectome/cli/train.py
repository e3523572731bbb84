"""Train a model: `connectome train affinities|ffn --raw ADDR --labels ADDR ... --name NAME --out DIR`
(`connectome train edges --model M --raw ... --out FILE.json`: the learned agglomeration's edge classifier).

Addresses may end in a z range, `ADDR[z0:z1]`, to split one volume into training and validation
sections; training data that overlaps the validation or evaluation data is refused.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from connectome.cli.arg_types import non_negative_float, non_negative_int, positive_float, positive_int
from connectome.cli.main import print_result
from connectome.cli.segment import add_section_order_option

MODELS = ("affinities", "ffn", "edges", "tissue")


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
    p.add_argument("--iterations", type=positive_int, default=2000)
    p.add_argument("--batch-size", type=positive_int, default=2)
    p.add_argument("--patch", type=positive_int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="input patch shape (default 48 48 48 for iso, 12 160 160 for aniso)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--arch", choices=("iso", "aniso"), default="iso",
                   help="iso: 2x2x2 downsampling, 3x3x3 kernels; aniso: 1x2x2 downsampling for serial sections")
    p.add_argument("--voxel-size", type=positive_float, nargs=3, metavar=("Z", "Y", "X"),
                   help="nm; recorded in the model (default: from the raw volume)")
    p.add_argument("--section-raw", action="append", default=[], metavar="ADDR",
                   help="an extra training raw volume whose labels are per section only (2-D), repeatable: "
                        "its in-plane affinities are trained, its z affinities get no loss (e.g. ISBI or VNC "
                        "beside a volume with 3-D labels)")
    p.add_argument("--section-labels", action="append", default=[], metavar="ADDR",
                   help="per-section object ids for the --section-raw of the same position")
    add_section_order_option(p, "train on the volumes with 3-D labels (--raw, --val-raw, --eval-raw) in the "
                                "order recovered from their images, their labels with them", "auto")
    p.add_argument("--labels-2d", action="store_true",
                   help="labels are per section only: no loss on z affinities; at inference the z affinity "
                        "is derived from the in-plane ones")
    p.add_argument("--no-aux", dest="aux", action="store_false",
                   help="train without the long-range affinity outputs")
    p.add_argument("--lsd", action="store_true",
                   help="also learn the 10 local shape descriptors as auxiliary outputs (MtLSD; dropped at inference)")
    p.add_argument("--lsd-sigma", type=positive_float, default=80.0, metavar="NM", help="descriptor window sigma in nm")
    p.add_argument("--lsd-weight", type=non_negative_float, default=1.0,
                   help="weight of the descriptors' MSE in the loss")
    p.add_argument("--malis-weight", type=non_negative_float, default=0.0, metavar="W",
                   help="add the constrained MALIS loss (squared error on the edges where pairs of voxels merge "
                        "or split) with this weight, on patches with 3-D labels; 0: off")
    p.add_argument("--norm", choices=("batch", "none"), default="batch",
                   help="BatchNorm while training (folded into the convolutions for inference), or none")
    p.add_argument("--base-channels", type=positive_int, metavar="N",
                   help="channels at full resolution, growing by the arch's factor per level (default 8)")
    p.add_argument("--max-channels", type=positive_int, metavar="N", help="cap on any level's channels (default 64)")
    p.add_argument("--init", metavar="MODEL",
                   help="start from this model's weights (a shipped name or a .pt path with the same "
                        "architecture, or a narrower one: it is widened so that it starts computing the same "
                        "affinities); its input normalisation is kept")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--val-every", type=positive_int, default=250, metavar="N")
    p.add_argument("--max-minutes", type=positive_float, default=None, metavar="M",
                   help="stop after M minutes of wall time (the learning-rate decay follows the clock)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads")
    p.add_argument("--loader-workers", type=int, default=None, metavar="N",
                   help="make the training batches in N worker processes, which keeps a GPU busy (0: in the "
                        "training process; default: 0 on the CPU, on a GPU the CPU cores less two, at most 16)")
    p.add_argument("--install", action="store_true",
                   help="copy the best weights + json into connectome/models/weights/ (a shipped model)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_ffn(sub)
    _add_edges(sub)
    _add_tissue(sub)


def _add_edges(sub) -> None:
    p = sub.add_parser("edges", help="the edge classifier of `connectome segment --scoring learned`",
                       description="Fit a small MLP on region-graph edges (features of the affinity model's "
                                   "fragments) and choose its merge threshold by VOI on --val-raw.")
    p.add_argument("--model", dest="affinity_model", required=True,
                   help="the affinity model whose fragments and affinities it scores")
    p.add_argument("--raw", action="append", required=True, metavar="ADDR", help="training raw (uint8); repeatable")
    p.add_argument("--labels", action="append", required=True, metavar="ADDR", help="object ids of that --raw")
    p.add_argument("--val-raw", required=True, metavar="ADDR", help="validation raw: chooses the threshold")
    p.add_argument("--val-labels", required=True, metavar="ADDR")
    p.add_argument("--out", required=True, metavar="FILE.json",
                   help="the classifier (name it <model>-edges.json beside the model to make it its default)")
    p.add_argument("--hidden", type=positive_int, nargs="*", default=[32, 16], metavar="N",
                   help="hidden layer widths")
    p.add_argument("--steps", type=positive_int, default=1500, help="full-batch Adam steps")
    p.add_argument("--weighting", choices=("contact", "log-contact", "edge"), default="contact",
                   help="loss weight of an edge: its contact area, log(1 + area), or 1")
    p.add_argument("--max-edges", type=int, default=None, metavar="N",
                   help="fit on N labelled edges drawn at random (seeded) when the volumes hold more")
    p.add_argument("--extent", type=int, default=None, metavar="VOXELS",
                   help="edges with a fragment spanning at most this many voxels on the finest axis (the same "
                        "distance on coarser ones) get the classifier's score; the rest keep their mean affinity "
                        "(default: 16, edge_features.EXTENT; larger costs a wider halo in `segment`)")
    p.add_argument("--members", type=int, default=1, metavar="K",
                   help="fit K classifiers (seeds SEED .. SEED + K - 1) and store one MLP scoring their mean logit")
    p.add_argument("--no-image", action="store_true",
                   help="fit on the affinity and size features only, not the EM image's (contact and smaller "
                        "fragment intensity); `segment` then does not read the image in its agglomerate stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    p.add_argument("--cache", metavar="DIR", help="keep the predicted affinities here for re-runs")
    add_section_order_option(p, "take each volume's edges in the order recovered from its images, its labels "
                                "with it", "auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _run_edges(args) -> int:
    from connectome.affinity.edge_features import EXTENT
    from connectome.affinity.edge_training import train_edges

    _check_edges_input(args)
    quiet = getattr(args, "json", False)
    meta = train_edges(args.affinity_model, args.raw, args.labels, args.val_raw, args.val_labels, args.out,
                       tuple(args.hidden), args.steps, args.seed, args.weighting, threads=args.threads,
                       command=_command_line(), cache=args.cache, max_edges=args.max_edges,
                       extent=EXTENT if args.extent is None else args.extent, members=args.members,
                       section_order=args.section_order, image=not args.no_image,
                       log=(lambda *a: print(*a, file=sys.stderr, flush=True)) if quiet else print)
    best = meta["provenance"]["validation"]["best"]
    summary = {"out": args.out, "threshold": meta["threshold"], "validation": best,
               "validation_mean": meta["provenance"]["validation"]["best_mean"]}
    print_result(args, summary, f"edge classifier: {args.out}; validation VOI {best['voi']:.3f} (split "
                                f"{best['voi_split']:.3f}, merge {best['voi_merge']:.3f}) at threshold "
                                f"{meta['threshold']}")
    return 0


def _check_edges_input(args) -> None:
    """What `train edges` would find only after predicting and fitting (a folder as --out, a traceback then), or
    not at all (data of another voxel size than the model's, which `segment` refuses to run it on), in one line."""
    import os

    from connectome.core.errors import UserError
    from connectome.io import open_volume
    from connectome.models.registry import read_info, resolve_model_path
    from connectome.models.voxel_size import check_voxel_size

    if os.path.isdir(args.out):
        raise UserError(f"--out {args.out}: a folder; expected the classifier's file, e.g. "
                        f"{os.path.join(args.out, 'MODEL-edges.json')}")
    info = read_info(resolve_model_path(args.affinity_model))
    for address in (*args.raw, args.val_raw):
        meta = open_volume(address).meta
        if meta.voxel_size_known:
            check_voxel_size(args.affinity_model, info.voxel_size, address, meta.voxel_size,
                             hint="the classifier learns from the model's affinities as `segment` predicts them, "
                                  "which it refuses on such data: choose a model of that voxel size")


def _add_ffn(sub) -> None:
    p = sub.add_parser("ffn", help="a flood-filling network used by `connectome segment --method ffn`",
                       description=__doc__)
    p.add_argument("--raw", action="append", required=True, metavar="ADDR", help="training raw (uint8); repeatable")
    p.add_argument("--labels", action="append", required=True, metavar="ADDR", help="object ids of that --raw")
    p.add_argument("--val-raw", metavar="ADDR", help="validation raw, segmented to score checkpoints")
    p.add_argument("--val-labels", metavar="ADDR")
    p.add_argument("--name", required=True, help="model name (ffn-...): writes OUT/NAME.pt and OUT/NAME.json")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--iterations", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=4)
    p.add_argument("--moves", type=non_negative_int, default=1, help="FOV moves per example after the first step")
    p.add_argument("--scale", nargs=3, type=int, default=(1, 1, 1), metavar=("Z", "Y", "X"),
                   help="train at the data's voxel size times these whole factors (the image averaged and the labels "
                        "sampled in boxes of that size); `segment --method ffn` then downsamples by them too")
    p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                   help="draw example centres evenly over the share of the FOV their object fills (default); "
                        "--no-balance: every object voxel equally likely")
    p.add_argument("--arch", choices=("cpu", "cpu-aniso", "reference", "reference-aniso"), default=None,
                   help="cpu (default): FOV 17^3, step 5, 3 modules of 16 features; reference: the published 33^3, "
                        "step 8, 12 modules of 32; -aniso: a FOV and step smaller in z for serial sections")
    p.add_argument("--init", metavar="MODEL",
                   help="continue training this FFN (a shipped name or a .pt path): its architecture, input and "
                        "normalisation; its weights are validated first and kept unless a checkpoint beats them")
    p.add_argument("--fov", type=positive_int, nargs=3, metavar=("Z", "Y", "X"), help="override the FOV of --arch")
    p.add_argument("--deltas", type=non_negative_int, nargs=3, metavar=("Z", "Y", "X"),
                   help="override the movement step (0 on an axis the FOV is 1 voxel deep in)")
    p.add_argument("--depth", type=positive_int, help="override the module count")
    p.add_argument("--features", type=positive_int, help="override the feature count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--val-every", type=positive_int, default=250, metavar="N")
    p.add_argument("--val-orders", type=int, choices=(1, 2), default=2,
                   help="segment the validation volume with its seeds in forward order (1) or in forward and "
                        "reverse order (2, default), and score the mean: one order's VOI swings by up to 0.9 "
                        "between orders on real FIB-SEM")
    p.add_argument("--max-minutes", type=positive_float, default=None, metavar="M")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where the network trains and validates")
    p.add_argument("--voxel-size", type=positive_float, nargs=3, metavar=("Z", "Y", "X"))
    p.add_argument("--input", default=None, metavar="raw|affinities:MODEL",
                   help="the network's image: the raw EM (default), or the mean of the named affinity model's "
                        "affinities (predicted here for every --raw; `segment --method ffn` runs that model first)")
    p.add_argument("--install", action="store_true",
                   help="copy the best weights, json and curve into the shipped models")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _command_line() -> str:
    """The command as typed, when run from the `connectome` entry point (or `python -m connectome.cli`)."""
    argv = sys.argv[1:]
    if argv[:1] != ["train"]:
        return "(called from Python, not the command line)"
    return "connectome " + " ".join(shlex.quote(a) for a in argv)


def _check_paired_and_out(args) -> None:
    """Options that go in pairs given together, and an output folder that can be one (one line each)."""
    from connectome.core.errors import UserError
    from connectome.engine.plan import check_output_path

    for a, b in (("val_raw", "val_labels"), ("eval_raw", "eval_labels")):
        if hasattr(args, a) and (getattr(args, a) is None) != (getattr(args, b) is None):
            given, missing = (a, b) if getattr(args, a) is not None else (b, a)
            raise UserError(f"--{given.replace('_', '-')} given without --{missing.replace('_', '-')}: "
                            f"expected both (the validation is scored against them) or neither")
    name = getattr(args, "name", None)
    if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name):
        raise UserError(f"--name {name!r}: expected a file name (letters, digits, '-', '_', '.'), not a path: the "
                        f"model is written as OUT/NAME.pt and OUT/NAME.json (give the folder as --out)")
    if args.model == "ffn" and not args.name.startswith("ffn-"):
        raise UserError(f"--name {args.name}: expected a name starting with 'ffn-' (segment --method ffn finds FFN "
                        f"models by it)")
    if args.model in ("affinities", "ffn", "tissue"):
        check_output_path(args.out)


def run(args) -> int:
    _check_paired_and_out(args)
    if args.model == "ffn":
        return _run_ffn(args)
    if args.model == "edges":
        return _run_edges(args)
    if args.model == "tissue":
        return _run_tissue(args)
    from connectome.affinity.training import TrainSettings, train

    patch = tuple(args.patch) if args.patch else ((12, 160, 160) if args.arch == "aniso" else (48, 48, 48))
    settings = TrainSettings(
        raw=args.raw, labels=args.labels, name=args.name, out=args.out,
        section_raw=args.section_raw, section_labels=args.section_labels,
        val_raw=args.val_raw, val_labels=args.val_labels,
        eval_raw=args.eval_raw, eval_labels=args.eval_labels,
        iterations=args.iterations, batch_size=args.batch_size, patch=patch, seed=args.seed,
        device=args.device, arch=args.arch,
        voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
        labels_2d=args.labels_2d, aux=args.aux, lsd=args.lsd, lsd_sigma_nm=args.lsd_sigma,
        lsd_weight=args.lsd_weight, malis_weight=args.malis_weight, norm=args.norm, lr=args.lr, init=args.init,
        base_channels=args.base_channels, max_channels=args.max_channels,
        val_every=args.val_every, max_minutes=args.max_minutes,
        threads=args.threads, loader_workers=args.loader_workers, install=args.install,
        section_order=args.section_order, command=_command_line(),
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


def _run_ffn(args) -> int:
    from dataclasses import replace
    from typing import Any

    from connectome.core.errors import UserError
    from connectome.core.geometry import vec3
    from connectome.ffn import model as M
    from connectome.ffn.training import FFNTrainSettings, train

    overrides: dict[str, Any] = {k: (vec3(v) if isinstance(v, list) else v) for k, v in
                 (("fov", args.fov), ("deltas", args.deltas), ("depth", args.depth), ("features", args.features))
                 if v is not None}
    if args.init is not None:
        from connectome.ffn.registry import read_info, resolve_model_path

        given = [f"--{k}" for k in ("arch", *overrides) if getattr(args, k) is not None]
        start = read_info(resolve_model_path(args.init))
        if given:
            raise UserError(f"--init {args.init}: it sets the network ({start.config.depth} modules of "
                            f"{start.config.features} features, FOV {list(start.config.fov)}); leave out "
                            f"{' '.join(given)}")
        if args.input is not None and args.input != start.input:
            raise UserError(f"--init {args.init}: it reads {start.input}, not {args.input}; leave out --input")
        config, args.input = start.config, start.input
    else:
        config = {"cpu": M.CPU, "cpu-aniso": M.CPU_ANISO, "reference": M.REFERENCE,
                  "reference-aniso": M.REFERENCE_ANISO}[args.arch or "cpu"]
        try:
            config = replace(config, **overrides)
        except ValueError as e:
            raise UserError(str(e)) from None
    settings = FFNTrainSettings(
        raw=args.raw, labels=args.labels, name=args.name, out=args.out, val_raw=args.val_raw,
        val_labels=args.val_labels, iterations=args.iterations, batch_size=args.batch_size, moves=args.moves,
        balance=args.balance, config=config, seed=args.seed, lr=args.lr, val_every=args.val_every,
        val_orders=args.val_orders, max_minutes=args.max_minutes, threads=args.threads,
        voxel_size=tuple(args.voxel_size) if args.voxel_size else None,
        install=args.install, command=_command_line(), input=args.input or "raw", scale=vec3(args.scale),
        device=args.device, init=args.init,
    )
    if min(settings.scale) < 1:
        raise UserError(f"--scale {' '.join(map(str, args.scale))}: factors must be whole numbers of at least 1")
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    summary = train(settings, log=log)
    v = summary["validation"]
    human = (f"trained {summary['name']} in {summary['wall_time_s'] / 60:.1f} min: loss "
             f"{summary['first_loss']:.4f} -> {summary['final_loss']:.4f}"
             + (f"; best validation VOI {v['voi']:.3f} (split {v['voi_split']:.3f}, merge {v['voi_merge']:.3f}, "
                f"merges {v['merges']}) at iteration {v['iteration']}" if v else "")
             + f"\nweights: {summary['weights']}"
             + (f" (installed as {summary['installed']})" if summary["installed"] else ""))
    print_result(args, summary, human)
    return 0


def _add_tissue(sub) -> None:
    p = sub.add_parser("tissue", help="the tissue-class network of `connectome tissue`",
                       description="Train the 2-d tissue-class U-Net on synthetic volumes and the real classes of "
                                   "../shared/data (VNC glia and mitochondria, EPFL mitochondria), each source "
                                   "supervising only the classes it labels; validates on held-out sections.")
    p.add_argument("--data", default="../shared/data", metavar="DIR", help="the real data folder")
    p.add_argument("--name", default="tissue", help="model name: writes OUT/NAME.pt and OUT/NAME.json")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (weights, json, history)")
    p.add_argument("--iterations", type=positive_int, default=6000)
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--patch", type=positive_int, default=192, help="in-plane patch size (pixels)")
    p.add_argument("--synthetic-seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="seeds of the synthetic training volumes (default 101-108; 901 validates)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--val-every", type=positive_int, default=200, metavar="N")
    p.add_argument("--max-minutes", type=positive_float, default=None, metavar="M",
                   help="stop after M minutes of wall time (the learning-rate decay follows the clock)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    p.add_argument("--init", metavar="MODEL",
                   help="continue this tissue model (name or .pt path): its network and weights, validated first "
                        "and kept unless a checkpoint beats them")
    p.add_argument("--install", action="store_true",
                   help="copy the best weights + json into connectome/models/weights/ (a shipped model)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _run_tissue(args) -> int:
    from connectome.core.errors import UserError
    from connectome.tissue import sources as S
    from connectome.tissue.training import TissueTrainSettings, train_tissue

    if not S.real_data_available(args.data):
        raise UserError(f"--data {args.data}: expected {S.VNC_FILE} and {S.EPFL_FILE} there")
    seeds = tuple(args.synthetic_seeds or S.TRAIN_SEEDS)
    if S.VAL_SEED in seeds:
        raise UserError(f"--synthetic-seeds: {S.VAL_SEED} is the validation volume's seed; choose others")
    settings = TissueTrainSettings(
        name=args.name, out=args.out, data_dir=args.data, iterations=args.iterations, batch_size=args.batch_size,
        patch=args.patch, lr=args.lr, seed=args.seed, val_every=args.val_every, max_minutes=args.max_minutes,
        threads=args.threads, init=args.init, install=args.install, synthetic_seeds=seeds,
        command=_command_line())
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    summary = train_tissue(settings, S.training_sources(args.data, seeds), S.validation_sources(args.data), log=log)
    v = summary["validation"]
    human = (f"trained {summary['name']} in {summary['wall_time_s'] / 60:.1f} min: loss "
             f"{summary['first_loss']:.4f} -> {summary['final_loss']:.4f}; best validation balanced accuracy "
             f"{v['score']:.4f} at iteration {v['iteration']}\nweights: {summary['weights']}"
             + (f" (installed as {summary['installed']})" if summary["installed"] else ""))
    print_result(args, {k: summary[k] for k in ("name", "weights", "iterations", "first_loss", "final_loss",
                                                "installed", "wall_time_s")} | {"best": v}, human)
    return 0
