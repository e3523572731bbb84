"""The alignment's global step: every block's match table -> defect flags, outlier rejection, the
global solve, and one file of per-section fields and transforms (OUT/alignment/transforms.npz)."""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from connectome.alignment.defects import OK, REASONS, grey_level, region_flags, section_flags
from connectome.alignment.fit import MIN_SUPPORT, apply, fit_transform, local_outliers, supported_fit
from connectome.alignment.links import breaks, joined_sections, link
from connectome.alignment.mesh import Springs
from connectome.alignment.overlap import SectionImages, compose, refine_best, search_near
from connectome.alignment.patches import SEARCH_FAILED
from connectome.alignment.solve import Measured, solve_fields
from connectome.engine.global_step import GlobalStep

MATCHES_FORMAT = 1


# options whose effect is off at 0: left out of fingerprints there, so runs from before each option resume
OFF_AT_ZERO = ("hold", "strain")


@dataclass(frozen=True)
class SolveSettings:
    model: str = "affine"
    min_corr: float = 0.15
    max_residual: float = 8.0
    max_deviation: float = 3.0
    stretch: float = 0.001
    fill_weight: float = 0.05
    skip_weight: float = 0.05
    bend: float = 0.01
    anchor: float = 0.01
    z_smooth: float = 1e-6
    rounds: int = 3
    min_std: float = 1.0
    max_zero_fraction: float = 0.5
    min_good_fraction: float = 0.25
    refine: bool = False
    max_disagreement: float = 4.0
    ambiguity: float = 0.1
    hold: float = 0.0  # `registered_pairs` (0: every pair followed)
    strain: float = 0.1  # `mesh.Springs.strain` (0: each section's scale and shear as free as its rotation)


@dataclass
class Matches:
    """Every block's table gathered into arrays over the whole stack."""

    shape: tuple[int, int, int]
    patch: int
    nodes: tuple[np.ndarray, np.ndarray]
    d: dict[int, np.ndarray]  # (sections - k, gy, gx, 2)
    corr: dict[int, np.ndarray]  # (sections - k, gy, gx); NaN where no block measured it
    stats: np.ndarray  # (sections, 4): count, sum, sum of squares, zero pixels


def load_matches(directory: str) -> Matches:
    paths = sorted(glob.glob(os.path.join(directory, "*.npz")))
    if not paths:
        raise RuntimeError(f"{directory}: no match tables (the align_match stage wrote none)")
    tables = []
    for path in paths:
        with np.load(path) as f:
            tables.append({key: f[key] for key in f.files})
    first = tables[0]
    depth, height, width = (int(v) for v in first["shape"])
    shape = (depth, height, width)
    nodes = (first["nodes_y"], first["nodes_x"])
    n, gy, gx = shape[0], len(nodes[0]), len(nodes[1])
    ks = sorted({int(k) for t in tables for k in np.unique(t["k"])})
    d = {k: np.zeros((n - k, gy, gx, 2)) for k in ks}
    corr = {k: np.full((n - k, gy, gx), np.nan) for k in ks}
    stats = np.zeros((n, 4))
    for t in tables:
        for k in ks:
            sel = t["k"] == k
            z, iy, ix = t["z"][sel], t["iy"][sel], t["ix"][sel]
            d[k][z, iy, ix] = t["d"][sel]
            corr[k][z, iy, ix] = t["corr"][sel]
        np.add.at(stats, t["stat_z"], np.stack([t["stat_count"], t["stat_sum"], t["stat_sum_sq"],
                                                t["stat_zeros"]], axis=1))
    for k in ks:
        missing = int(np.isnan(corr[k]).sum())
        if missing:
            raise RuntimeError(f"{directory}: {missing} patch matches at offset {k} missing (an unfinished block?)")
    return Matches(shape, int(first["patch"]), nodes, d, corr, stats)


def _measurable(nodes, shape, patch: int, predicted: np.ndarray) -> np.ndarray:
    """Nodes whose template, moved by the predicted displacement, lies inside the other section."""
    gy, gx = np.meshgrid(*nodes, indexing="ij")
    qy, qx = gy + predicted[..., 0], gx + predicted[..., 1]
    half = patch / 2
    return (qy - half >= -1) & (qy + half <= shape[1] + 1) & (qx - half >= -1) & (qx + half <= shape[2] + 1)


def screen(m: Matches, s: SolveSettings, images: SectionImages | None = None):
    """Pair fits, good patches, measurable patches and filled displacements for every pair. With the
    sections' `images`, each pair's fit is refined on intensities over the pair's whole overlap and
    the patches that disagree with it are searched again near it (`overlap.refine_best`,
    `overlap.search_near`); a pair that skips sections and contradicts the chain through them, which
    agrees better, is dropped (`_chain_better`)."""
    gy, gx = np.meshgrid(*m.nodes, indexing="ij")
    points = np.stack([gy.ravel(), gx.ravel()], axis=1).astype(np.float64)
    fits, good, measurable, filled = {}, {}, {}, {}
    rechecked = 0
    for k, d in m.d.items():
        fits[k] = np.full((len(d), 2, 3), np.nan)
        good[k] = np.zeros(d.shape[:3], bool)
        measurable[k] = np.ones(d.shape[:3], bool)
        filled[k] = d.copy()
    agreement = {k: np.full(len(d), np.nan) for k, d in m.d.items()}
    ks = sorted(m.d)
    for end in range(m.shape[0]):  # by the pair's last section: a few sections' images are read at a time
        for k in ks:
            z = end - k
            d = m.d[k]
            if z < 0 or z >= len(d):
                continue
            flat = d[z].reshape(-1, 2)
            corr = m.corr[k][z].ravel()
            fit, inliers = supported_fit(s.model, points, flat, corr >= s.min_corr, s.max_residual,
                                         MIN_SUPPORT if k > 1 else 0.0)
            if images is not None:
                chain = _chain(fits, z, k)
                starts = ([] if fit is None else [fit]) + ([] if chain is None else [chain])
                best = refine_best(images, z, k, starts) if starts else None
                if best is not None and chain is not None and _chain_better(agreement, z, k, best, chain, points,
                                                                            s.max_disagreement):
                    continue  # a pair that skips sections and contradicts the better chain through them
                if best is not None:
                    fit = best[0]
                    agreement[k][z] = best[1]
                    flat, corr, count = search_near(images, z, k, fit, points, flat, corr, m.patch, s.max_disagreement,
                                                    s.min_corr, s.ambiguity)
                    rechecked += count
                    residual = np.linalg.norm(apply(fit, points) - (points + flat), axis=1)
                    inliers = (corr >= s.min_corr) & (residual <= s.max_residual)
            if fit is None:
                continue
            grid = flat.reshape(d.shape[1:])
            inliers = inliers.reshape(d.shape[1:3])
            inliers &= ~local_outliers(grid, inliers, s.max_deviation)
            predicted = (apply(fit, points) - points).reshape(d.shape[1:])
            fits[k][z] = fit
            good[k][z] = inliers
            # a search that failed (no peak inside its window) is no evidence of a defect
            measurable[k][z] = (_measurable(m.nodes, m.shape, m.patch, predicted)
                                & (corr.reshape(d.shape[1:3]) != SEARCH_FAILED))
            filled[k][z] = np.where(inliers[..., None], grid, predicted)
    return fits, good, measurable, filled, rechecked


def _chain(fits: dict[int, np.ndarray], z: int, k: int) -> np.ndarray | None:
    """The transform from z to z + k through the sections between (pairs one apart), if all are fitted."""
    if k < 2 or 1 not in fits:
        return None
    out = np.hstack([np.eye(2), np.zeros((2, 1))])
    for i in range(z, z + k):
        if not np.isfinite(fits[1][i]).all():
            return None
        out = compose(out, fits[1][i])
    return out


def _chain_better(agreement: dict[int, np.ndarray], z: int, k: int, refined: tuple[np.ndarray, float],
                  chain: np.ndarray, points: np.ndarray, max_disagreement: float) -> bool:
    """Whether pair (z, z + k)'s refined transform contradicts the chain through the sections between
    (by more than `max_disagreement` px at the median node) while every pair of that chain agrees
    better on intensities: then the pair is a false match (real sections change more over a longer
    distance, and a repetitive texture can fit a wrong stretch), not a defective section between."""
    links = agreement[1][z:z + k]
    if len(links) < k or not np.all(links > refined[1]):
        return False
    return float(np.median(np.linalg.norm(apply(refined[0], points) - apply(chain, points), axis=1))) > max_disagreement


HOLD_MIN_PATCHES = 6  # a pair is held as registered only on at least this many good patches (`registered_pairs`)
HOLD_SPAN = 2  # pairs in a row that registered sections on both sides are held across (`held_across`)


def _size_and_scatter(fit: np.ndarray, good: np.ndarray, d: np.ndarray, points: np.ndarray) -> tuple[float, float]:
    """The RMS over the nodes of the displacement a pair's fit makes, and the RMS of its good patches about it."""
    shift = apply(fit, points) - points
    g = good.ravel()
    return (float(np.sqrt(np.mean(np.sum(shift ** 2, axis=1)))),
            float(np.sqrt(np.mean(np.sum((d.reshape(-1, 2)[g] - shift[g]) ** 2, axis=1)))))


def registered_pairs(fits: dict[int, np.ndarray], good: dict[int, np.ndarray], d: dict[int, np.ndarray],
                     points: np.ndarray, hold: float, ok: np.ndarray) -> dict[int, np.ndarray]:
    """The pairs (per offset k, a bool per pair) whose measured transform is no evidence that they are out of
    register: the RMS over the nodes of the displacement their robust fit makes is at most `hold` times the
    scatter (RMS) of their good patches about that fit, on at least HOLD_MIN_PATCHES good patches. Two real
    sections 50 nm apart differ in content, and their best affine is not identity even where the stack is
    registered (VNC neighbours, 384-px crops: 2-10 px, up to 1.9 degrees and 3 % scale, at 1-2.5 times the
    scatter of their patches); integrated along the stack, those pair transforms drifted a registered stack by
    19 px, 0.9 degrees and 6 % scale. Misregistered sections measure 3.4-10 times the scatter there. A pair two
    sections apart is held where both pairs between are (or, where one of them has no fit or the section between is
    flagged (not `ok`), by its own test)."""
    held = {}
    for k, f in fits.items():
        out = np.zeros(len(f), bool)
        for z in range(len(f)):
            if not np.isfinite(f[z]).all() or good[k][z].sum() < HOLD_MIN_PATCHES:
                continue
            size, scatter = _size_and_scatter(f[z], good[k][z], d[k][z], points)
            out[z] = size <= hold * scatter
        held[k] = out
    for k in held:
        if k < 2 or 1 not in held:
            continue
        steps = np.stack([held[1][i:len(held[1]) - k + 1 + i] for i in range(k)])  # pairs z + i -> z + i + 1
        fitted = np.stack([np.isfinite(fits[1][i:len(fits[1]) - k + 1 + i]).all(axis=(1, 2)) for i in range(k)])
        between = np.stack([ok[i:len(ok) - k + i] for i in range(1, k)]).all(axis=0)  # the sections skipped
        held[k] = np.where(fitted.all(axis=0) & between, steps.all(axis=0), held[k])
    return held


def held_across(fits: dict[int, np.ndarray], good: dict[int, np.ndarray], d: dict[int, np.ndarray],
                held: dict[int, np.ndarray], ok: np.ndarray, points: np.ndarray, hold: float) -> list[tuple[int, int]]:
    """Usable sections (a, b), up to HOLD_SPAN pairs apart, whose pairs to the sections after a and before b are
    not held (pairs of neighbouring usable sections), and whose chain of fits between them composes to a
    transform that passes `registered_pairs`' test (against the quadrature sum of the pairs' scatters): a
    section out of register between two registered ones. Held as registered to each other, the sections on
    both sides stay where they are; joined through the moved section alone, they would follow the content
    differences of its two pairs."""
    zs = np.flatnonzero(ok)
    steps = []
    for a, b in zip(zs[:-1], zs[1:]):
        k = int(b - a)
        usable = k in fits and np.isfinite(fits[k][a]).all() and good[k][a].sum() >= HOLD_MIN_PATCHES
        f = fits[k][a] if usable else None
        steps.append(None if f is None else (f, _size_and_scatter(f, good[k][a], d[k][a], points)[1], bool(held[k][a])))
    out = []
    for i, first in enumerate(steps):
        if first is None or first[2]:
            continue
        chain = np.hstack([np.eye(2), np.zeros((2, 1))])
        variance = 0.0
        for j in range(i, min(i + HOLD_SPAN + 1, len(steps))):
            step = steps[j]
            if step is None:
                break
            chain = compose(chain, step[0])
            variance += step[1] ** 2
            if j > i and not step[2]:  # from the first moved section's pair to a moved section's pair
                size = float(np.sqrt(np.mean(np.sum((apply(chain, points) - points) ** 2, axis=1))))
                if size <= hold * np.sqrt(variance):
                    out.append((int(zs[i]), int(zs[j + 1])))
    return out


def _skip_factor(good: dict[int, np.ndarray], k: int, skip_weight: float) -> np.ndarray | float:
    """Weight factor of the matches from z to z + k: `skip_weight` where good matches z -> z + 1 -> z + 2
    already chain the two sections (real sections change more over twice the distance: the chain is the
    better measurement), 1 where the chain is broken (a flagged section or region between them)."""
    if k != 2 or 1 not in good:
        return 1.0
    chained = good[1][:-1] & good[1][1:]
    return np.where(chained, skip_weight, 1.0)


class SolveStep(GlobalStep):
    """Flags, outlier rejection and the global solve, once over the whole stack."""

    name = "align_solve"

    def __init__(self, tables_dir: str, path: str, settings: SolveSettings, raw: str | None = None):
        self.tables_dir, self.path, self.settings, self.raw = tables_dir, path, settings, raw

    def fingerprint(self) -> dict:
        """Without `refine`, the one from before the option existed, so earlier runs resume."""
        params = asdict(self.settings)
        for option in OFF_AT_ZERO:
            if not params[option]:
                del params[option]
        if not self.settings.refine:
            return {"step": self.name, "tables": self.tables_dir, "path": self.path,
                    "params": {k: v for k, v in params.items() if k not in ("refine", "max_disagreement", "ambiguity")}}
        return {"step": self.name, "params": params, "tables": self.tables_dir, "path": self.path, "raw": self.raw}

    def _raw_dtype(self):
        """The raw volume's dtype (uint8 where the step was given none)."""
        if self.raw is None:
            return np.uint8
        from connectome.io import open_volume

        return open_volume(self.raw).meta.dtype

    def run(self) -> dict:
        s = self.settings
        m = load_matches(self.tables_dir)
        images = SectionImages(self.raw) if s.refine and self.raw is not None else None
        fits, good, measurable, filled, rechecked = screen(m, s, images)
        count, total, total_sq, zeros = m.stats.T
        unit = grey_level(self._raw_dtype(), count, total, total_sq)  # min_std is in grey levels of uint8
        flags = section_flags(count, total, total_sq, zeros, good, measurable, s.min_std * unit, s.max_zero_fraction,
                              s.min_good_fraction)
        sections = images if images is not None else (SectionImages(self.raw) if self.raw is not None else None)
        regions = region_flags(good, measurable, flags, corr=m.corr, fits=fits, images=sections, nodes=m.nodes,
                               patch=m.patch)
        ok = flags == OK
        # unmatched nodes follow the pair's robust fit, weakly: extrapolation where sections do not overlap
        weights = {k: np.where(good[k], 1.0, s.fill_weight * np.isfinite(fits[k][:, :1, :1]))
                   * (ok[:-k, None, None] & ok[k:, None, None]) * _skip_factor(good, k, s.skip_weight) for k in good}
        gy, gx = np.meshgrid(*m.nodes, indexing="ij")
        points = np.stack([gy.ravel(), gx.ravel()], axis=1).astype(np.float64)
        held = registered_pairs(fits, good, filled, points, s.hold, ok) if s.hold > 0 else {k: np.zeros(len(w), bool)
                                                                                     for k, w in weights.items()}
        across = held_across(fits, good, filled, held, ok, points, s.hold) if s.hold > 0 else []
        for a, b in across:
            k = b - a
            if k not in held:
                held[k] = np.zeros(m.shape[0] - k, bool)
                weights[k] = np.zeros((m.shape[0] - k, *weights[1].shape[1:]))
                filled[k] = np.zeros((m.shape[0] - k, *filled[1].shape[1:]))
            held[k][a] = True
        for k, h in held.items():  # a registered pair: no displacement at any node, at full weight
            h = held[k] = h & ok[:-k] & ok[k:]  # (as solve.json and transforms.npz report it)
            filled[k][h] = 0.0
            weights[k][h] = 1.0
        links, unlinked = self._bridge(m, ok, weights, filled, points, images)
        measured = Measured(m.nodes, filled, weights, m.shape[0])
        estimated = time.perf_counter()
        springs = Springs(s.stretch, s.bend, s.z_smooth, s.anchor, strain=s.strain)
        fields, summary = solve_fields(measured, springs, rounds=s.rounds)
        transforms = np.stack([fit_transform(s.model, points, points + f.reshape(-1, 2)) for f in fields])
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp.npz"
        per_pair: dict[str, Any] = {**{f"held_{k}": v for k, v in held.items()},
                                    **{f"pair_fits_{k}": v for k, v in fits.items()},
                                    **{f"good_{k}": v for k, v in good.items()}}
        np.savez(tmp, nodes_y=m.nodes[0], nodes_x=m.nodes[1], fields=fields.astype(np.float32),
                 transforms=transforms, section_flags=flags, regions=regions, **per_pair)
        os.replace(tmp, self.path)
        flagged = {int(z): REASONS[int(flags[z])] for z in np.nonzero(flags)[0]}
        summary.update({
            "sections": int(m.shape[0]),
            "flagged_sections": flagged,
            "flagged_regions": int(regions.sum()),
            "good_patch_fraction": float(np.mean([g.mean() for g in good.values()])),
            "patches_searched_again": rechecked,
            "links": links,
            "breaks": unlinked,
            "pairs_held": {str(k): int(v.sum()) for k, v in held.items()},
            "pairs_followed": {str(k): int((np.isfinite(fits[k]).all(axis=(1, 2)) & ~held[k]).sum()) for k in fits},
            "held_across": [list(p) for p in across],
            "solve_seconds": round(time.perf_counter() - estimated, 3),
        })
        with open(os.path.join(os.path.dirname(self.path), "solve.json"), "w") as f:
            json.dump(summary, f, indent=1)
        return summary

    def _bridge(self, m: Matches, ok: np.ndarray, weights: dict[int, np.ndarray], filled: dict[int, np.ndarray],
                points: np.ndarray, images: SectionImages | None) -> tuple[list[dict], list[list[int]]]:
        """Each break in the chain of weighted pairs between usable sections (`links`) bridged by a
        whole-section link, added to `weights` and `filled` as a pair (a, b) of full weight where it
        lies inside section b; (the links made, the breaks left)."""
        joined = joined_sections(weights)
        made, left = [], []
        for a, b in breaks(joined, ok):
            if images is None and self.raw is not None:
                images = SectionImages(self.raw)
            found = link(images, a, b) if images is not None else None
            if found is None:
                left.append([a, b])
                continue
            k = b - a
            if k not in weights:
                weights[k] = np.zeros((m.shape[0] - k, *weights[1].shape[1:]))
                filled[k] = np.zeros((m.shape[0] - k, *filled[1].shape[1:]))
            predicted = (apply(found[0], points) - points).reshape(filled[k].shape[1:])
            filled[k][a] = predicted
            weights[k][a] = _measurable(m.nodes, m.shape, m.patch, predicted)
            joined.union(a, b)
            centre = np.array([[(m.shape[1] - 1) / 2, (m.shape[2] - 1) / 2]])  # where the sections' shift is read
            made.append({"from": a, "to": b, "agreement": round(found[1], 3),
                         "shift_px": [round(float(v), 1) for v in (apply(found[0], centre) - centre)[0]]})
        return made, left
