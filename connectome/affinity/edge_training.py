"""Training of the edge classifier (`edge_classifier`) on labelled volumes, in memory, one block each.

Each volume goes through the chain `connectome segment` runs (uint8 affinities of the given model,
steepest-ascent watershed, region graph: `validation`), and every fragment edge becomes one example:
its features (`edge_features`) and its label, merge when both fragments' majority ground-truth ids
are equal and non-zero, split when they differ; edges with a fragment mostly in ground-truth 0
(boundary or unlabelled) are left out, as VOI ignores those voxels. A small MLP is fitted with torch
on the CPU; the merge threshold is chosen by VOI on a validation volume with the real global merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from connectome.affinity.agglomeration import lookup_table
from connectome.affinity.edge_classifier import FEATURE_SETS, FORMAT, EdgeClassifier
from connectome.affinity.edge_context import one_block_sums
from connectome.affinity.edge_features import EXTENT, edge_features, extent_limit
from connectome.affinity.validation import AFF_HIGH, AFF_LOW, one_block_graph
from connectome.engine.stage import file_record
from connectome.io.lookup import relabel


@dataclass
class EdgeSet:
    """One volume's fragments, region graph (with histograms) and edge features."""

    fragments: np.ndarray
    tables: dict[str, np.ndarray]
    features: np.ndarray
    hist: object  # the edges' affinity histograms (scipy CSR), for quantile scoring
    limit: tuple[int, int, int]  # the extent (voxels per axis) up to which a fragment is small


def edge_set(affs_u8: np.ndarray, limit: Sequence[int] = (EXTENT,) * 3, aff_low: float = AFF_LOW,
             aff_high: float = AFF_HIGH, in_plane: bool = False, raw: np.ndarray | None = None) -> EdgeSet:
    """Fragments, region graph and features of uint8 affinities (3, z, y, x) in one block; with `raw` (their
    EM image, uint8), the image's features too."""
    fragments, tables, hist = one_block_graph(affs_u8, aff_low, aff_high, in_plane)
    z, y, x = (int(v) for v in limit)
    return EdgeSet(fragments, tables, edge_features(fragments, tables["u"], tables["v"], tables["sums"],
                                                    tables["counts"], hist, (z, y, x), raw=raw), hist, (z, y, x))


def majority_labels(fragments: np.ndarray, gt: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The most frequent ground-truth id inside each fragment of `ids` (ties: the least id)."""
    f, g = fragments.ravel(), np.asarray(gt).ravel().astype(np.int64)
    pairs, count = np.unique(np.stack([f.astype(np.int64), g]), axis=1, return_counts=True)
    order = np.lexsort((pairs[1], -count, pairs[0]))  # per fragment, the largest count first
    frag_sorted = pairs[0][order]
    first = np.concatenate([[True], frag_sorted[1:] != frag_sorted[:-1]])
    keys, values = frag_sorted[first], pairs[1][order][first]
    return values[np.searchsorted(keys, np.asarray(ids, np.int64))]


def edge_labels(edges: EdgeSet, gt: np.ndarray) -> np.ndarray:
    """1 (merge), 0 (split) or -1 (a side mostly ground-truth 0: no label) per edge."""
    t = edges.tables
    lu = majority_labels(edges.fragments, gt, t["u"])
    lv = majority_labels(edges.fragments, gt, t["v"])
    out = (lu == lv).astype(np.int8)
    out[(lu == 0) | (lv == 0)] = -1
    return out


def fit_classifier(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, hidden: Sequence[int] = (32, 16),
                   steps: int = 1500, seed: int = 0, lr: float = 3e-3, extent: int = EXTENT) -> dict:
    """Layers and standardisation of an MLP fitted by full-batch Adam on weighted cross-entropy (CPU); `features`
    the columns of one of `FEATURE_SETS`."""
    import torch

    torch.manual_seed(seed)
    x = np.asarray(features, np.float64)
    names = next((n for n in FEATURE_SETS if len(n) == x.shape[1]), None)
    if names is None:
        raise ValueError(f"fit_classifier: {x.shape[1]} feature columns; expected one of "
                         f"{[len(n) for n in FEATURE_SETS]}")
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt = torch.tensor(labels, dtype=torch.float32)
    wt = torch.tensor(weights / weights.mean(), dtype=torch.float32)
    sizes = [x.shape[1], *hidden, 1]
    layers: list[torch.nn.Module] = []
    for k in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[k], sizes[k + 1]))
        if k < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss(weight=wt)
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(net(xt)[:, 0], yt)
        loss.backward()
        opt.step()
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    return {"kind": "edge_classifier", "format": FORMAT, "features": list(names), "mean": mean.tolist(),
            "std": std.tolist(), "final_loss": float(loss.item()), "extent": int(extent),
            "layers": [{"weight": m.weight.detach().double().numpy().tolist(),
                        "bias": m.bias.detach().double().numpy().tolist()} for m in linear]}


def fit_members(features: np.ndarray, labels: np.ndarray, weights: np.ndarray, members: int = 1,
                hidden: Sequence[int] = (32, 16), steps: int = 1500, seed: int = 0, extent: int = EXTENT) -> dict:
    """`fit_classifier` with seeds seed .. seed + members - 1, folded into one MLP whose logit is the
    members' mean logit (hidden layers side by side, block-diagonal between them), as one fit's
    p(merge) moves with its seed."""
    fits = [fit_classifier(features, labels, weights, hidden, steps, seed + k, extent=extent) for k in range(members)]
    if members == 1:
        return fits[0]
    depth = len(fits[0]["layers"])
    layers = []
    for d in range(depth):
        ws = [np.asarray(f["layers"][d]["weight"]) for f in fits]
        bs = [np.asarray(f["layers"][d]["bias"]) for f in fits]
        if d == 0:
            w, b = np.vstack(ws), np.concatenate(bs)
        elif d < depth - 1:
            w = np.zeros((sum(x.shape[0] for x in ws), sum(x.shape[1] for x in ws)))
            r = c = 0
            for x in ws:
                w[r:r + x.shape[0], c:c + x.shape[1]] = x
                r, c = r + x.shape[0], c + x.shape[1]
            b = np.concatenate(bs)
        else:
            w, b = np.hstack(ws) / members, np.mean(bs, axis=0)
        layers.append({"weight": w.tolist(), "bias": b.tolist()})
    return dict(fits[0], layers=layers, members=members, final_loss=float(np.mean([f["final_loss"] for f in fits])))


def as_classifier(meta: dict, threshold: float = 0.5) -> EdgeClassifier:
    """An EdgeClassifier from `fit_classifier`'s dict (before it is written)."""
    return EdgeClassifier("(in memory)", np.asarray(meta["mean"]), np.asarray(meta["std"]),
                          tuple(np.asarray(m["weight"]) for m in meta["layers"]),
                          tuple(np.asarray(m["bias"]) for m in meta["layers"]), threshold, int(meta["extent"]),
                          features=tuple(meta["features"]))


def segment_learned(edges: EdgeSet, classifier: EdgeClassifier | None, thresholds: Sequence[float],
                    scoring: str = "mean"):
    """Yield (threshold, segmentation) of the global merge on p(merge) (None: on the mean affinity, or
    the median with `scoring` 'quantile'), as `connectome segment` merges one block: p(merge) on edges
    with a small side, the mean affinity elsewhere (`edge_context`)."""
    tables = dict(edges.tables)
    if classifier is not None:
        tables["sums"] = one_block_sums(edges.fragments, tables, edges.features, classifier, edges.limit)
    if scoring == "quantile":
        tables["hist"] = edges.hist.toarray()  # type: ignore[attr-defined]
    for t in thresholds:
        if len(tables["nodes"]) == 0:
            yield float(t), np.zeros(edges.fragments.shape, np.uint64)
            continue
        keys, values = lookup_table(tables, float(t), scoring)
        yield float(t), relabel(edges.fragments, keys, values)


def voi_sweep(edges: EdgeSet, gt: np.ndarray, classifier: EdgeClassifier | None, thresholds,
              scoring: str = "mean") -> list[dict]:
    """VOI (gt == 0 excluded) of `segment_learned` at each threshold."""
    from connectome.metrics import voi

    rows = []
    for t, seg in segment_learned(edges, classifier, thresholds, scoring):
        split, merge = voi(seg, gt)
        rows.append({"threshold": t, "voi_split": split + 0.0, "voi_merge": merge + 0.0, "voi": split + merge})
    return rows


WEIGHTINGS = ("contact", "log-contact", "edge")
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(2, 20))


def example_weights(counts: np.ndarray, weighting: str) -> np.ndarray:
    """Per-edge loss weights: contact area, its log, or one per edge."""
    counts = np.asarray(counts, np.float64)
    if weighting == "contact":
        return counts
    return np.log1p(counts) if weighting == "log-contact" else np.ones_like(counts)


def volume_edges(model, raw_address: str, labels_address: str, cache: str | None = None, extent: int = EXTENT,
                 section_order: str = "keep", image: bool = True):
    """(EdgeSet, labels, ground truth) of one labelled volume with `model`'s affinities, predicted as `segment`
    predicts them by default (the model's test-time augmentation, precision auto); fragments spanning at most
    `extent` voxels (finest axis) count as small; with `image`, the EM image's features follow the others.
    `section_order`: a volume stored out of order is taken in the order recovered from its images
    (`training.data.in_section_order`), its labels with it."""
    import hashlib
    import os
    from pathlib import Path

    from connectome.affinity.encoding import affinities_as_uint8
    from connectome.core.address import location, parse_address
    from connectome.models.inference import predict_volume
    from connectome.training.data import in_section_order, load_pair

    pair, sections = in_section_order(load_pair(raw_address, labels_address), section_order,
                                      model.info.voxel_size, "taking its edges in the recovered order")
    path = None
    if cache:
        from connectome.models.inference import resolve_precision

        precision = resolve_precision("auto", model.device)
        # flipped predictions read one voxel more on each flipped axis since 2026-12-06 (`flip_reach`): "|reach1"
        tag = "" if model.info.tta == 1 and precision == "float32" else f"|tta{model.info.tta}|{precision}|reach1"
        tag += f"|order{sections}" if sections is not None else ""
        # the weights' and json's content and where the data is, not their names: a model retrained in place (or
        # its normalisation edited) is predicted anew, the same data addressed from another folder is not
        weights = Path(model.info.path)
        if weights.is_file() and weights.with_suffix(".json").is_file():
            files = "|".join(file_record(f)["sha1"] for f in (weights, weights.with_suffix(".json")))
            where = parse_address(raw_address)
            data = f"{location(where.path)}#{where.key}{where.sections}"
            key = hashlib.sha1(f"{files}|{data}{tag}".encode()).hexdigest()[:16]
            path = os.path.join(cache, f"affs-{key}.npy")  # a model without its files is predicted, not cached
    if path and os.path.isfile(path):
        affs = np.load(path)
    else:
        affs = affinities_as_uint8(predict_volume(model, pair.raw, flips=model.info.tta, precision="auto"))
        if path:
            os.makedirs(cache, exist_ok=True)  # type: ignore[arg-type]
            np.save(path, affs)
    edges = edge_set(affs, extent_limit(model.info.voxel_size, extent), in_plane=model.info.in_plane,
                     raw=pair.raw if image else None)
    return edges, edge_labels(edges, pair.labels), pair.labels


def train_edges(model_name: str, raws: Sequence[str], labels: Sequence[str], val_raw: str, val_labels: str,
                out: str, hidden: Sequence[int] = (32, 16), steps: int = 1500, seed: int = 0,
                weighting: str = "contact", thresholds: Sequence[float] = THRESHOLDS, threads: int = 1,
                command: str = "", cache: str | None = None, max_edges: int | None = None, extent: int = EXTENT,
                members: int = 1, section_order: str = "auto", image: bool = True, log=print) -> dict:
    """Fit the edge classifier of `model_name` on (raws, labels), choose its threshold by VOI on the
    validation volume, write `out` (json) and return its content. The classifier scores edges with a side
    spanning at most `extent` voxels on the finest axis (`edge_context`); the others keep their mean affinity.
    `members` > 1 fits that many seeds and averages their logits (`fit_members`). `section_order`: volumes
    stored out of order are taken in the order recovered from their images (`volume_edges`). `image`: the EM
    image's features too (`INTENSITY_FEATURES`; the agglomerate stage then reads the image)."""
    import json
    import time
    from datetime import UTC, datetime
    from pathlib import Path

    import torch

    from connectome.core.errors import UserError
    from connectome.models.registry import load_model
    from connectome.training.data import overlapping_sections

    if len(raws) != len(labels) or not raws:
        raise UserError(f"{len(raws)} --raw but {len(labels)} --labels: give one --labels for each --raw "
                        "(at least one)")
    if weighting not in WEIGHTINGS:
        raise UserError(f"--weighting {weighting}: expected one of {', '.join(WEIGHTINGS)}")
    if extent < 1:
        raise UserError(f"--extent {extent}: expected a positive number of voxels")
    if members < 1:
        raise UserError(f"--members {members}: expected a positive number of fits")
    if max_edges is not None and max_edges < 1:
        raise UserError(f"--max-edges {max_edges}: expected a positive number of edges")
    clash = overlapping_sections(list(raws) + list(labels), [val_raw, val_labels])
    if clash:
        raise UserError(f"training data overlaps held-out data: {clash[0]}")
    start = time.perf_counter()
    torch.set_num_threads(threads)
    model = load_model(model_name, "cpu")
    # the validation volume first: bad validation labels are refused before any training volume is predicted
    val_edges, _, val_gt = volume_edges(model, val_raw, val_labels, cache, extent, section_order, image)
    xs, ys, ws, counts = [], [], [], []
    for raw, lab in zip(raws, labels):
        edges, y, _ = volume_edges(model, raw, lab, cache, extent, section_order, image)
        keep = y >= 0
        xs.append(edges.features[keep])
        ys.append(y[keep])
        ws.append(example_weights(edges.tables["counts"][keep], weighting))
        counts.append({"raw": raw, "labels": lab, "edges": int(keep.sum()), "merge": int(y[keep].sum()),
                       "unlabelled": int((~keep).sum())})
        log(f"{raw}: {counts[-1]['edges']} edges ({counts[-1]['merge']} merge), {counts[-1]['unlabelled']} unlabelled")
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    fitted = total = len(y)
    if max_edges is not None and len(y) > max_edges:
        pick = np.sort(np.random.default_rng(seed).choice(len(y), max_edges, replace=False))
        x, y, w, fitted = x[pick], y[pick], w[pick], max_edges
        log(f"fitting on {max_edges} of {total} labelled edges (drawn with seed {seed})")
    fit_start = time.perf_counter()
    meta = fit_members(x, y, w, members, hidden, steps, seed, extent=extent)
    fit_seconds = time.perf_counter() - fit_start
    learned = voi_sweep(val_edges, val_gt, as_classifier(meta), thresholds)
    mean = voi_sweep(val_edges, val_gt, None, thresholds)
    best = min(learned, key=lambda r: r["voi"])
    best_mean = min(mean, key=lambda r: r["voi"])
    log(f"validation: learned VOI {best['voi']:.3f} at {best['threshold']}, mean VOI {best_mean['voi']:.3f} "
        f"at {best_mean['threshold']}")
    meta.update({
        "name": Path(out).stem, "affinity_model": model_name, "threshold": best["threshold"],
        "affinity_weights": file_record(model.info.path),  # `check_fitted_to`: the weights it was fitted to
        "provenance": {
            "command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": threads, "wall_time_s": round(time.perf_counter() - start, 1),
            "fit_seconds": round(fit_seconds, 1), "hidden": list(hidden), "steps": steps, "seed": seed,
            "members": members, "image": image,
            "weighting": weighting, "fitted_edges": fitted, "section_order": section_order,
            "labels": "merge: both fragments' majority ground-truth ids equal and non-zero; "
            "edges with a side mostly ground-truth 0 left out",
            "data": {"train": counts, "validation": {"raw": val_raw, "labels": val_labels}},
            "validation": {"learned": learned, "mean": mean, "best": best, "best_mean": best_mean},
        },
    })
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(meta, indent=1) + "\n")
    return meta
