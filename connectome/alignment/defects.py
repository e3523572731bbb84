"""Defect flags: sections that are blank, missing (mostly zeros) or match neither neighbour, and
regions (patches) that match neither neighbour (folds, cracks, dirt, cutting artefacts).

A flagged section takes no part in the global solve: its field is interpolated from its neighbours
and the sections on both sides of it are aligned to each other directly (the pairs two apart).
"""

from __future__ import annotations

import numpy as np

OK, BLANK, MISSING, UNMATCHED = 0, 1, 2, 3
REASONS = {OK: "ok", BLANK: "blank", MISSING: "missing", UNMATCHED: "matches neither neighbour"}

# values of the defect mask volume; OUTSIDE: an aligned pixel whose source lies outside its section (no tissue
# was imaged there: the margins the warp leaves)
SECTION_FLAG, REGION_FLAG, OUTSIDE_FLAG = 1, 2, 3


def grey_level(dtype, count: np.ndarray, total: np.ndarray, total_sq: np.ndarray) -> float:
    """One grey level of 8-bit data in the raw's own units, the unit of `min_std`: 1 for 8-bit data, else 1/255 of
    the stack's intensity range, estimated as the span of the sections' mean +- 3 standard deviations (a float image
    in [0, 1] has deviations far below one, so every section was blank; 12-bit data stored as uint16 spans far less
    than 65535, so a grey level is not 257 units)."""
    dtype = np.dtype(dtype)
    if dtype.itemsize == 1:
        return 1.0
    mean = total / np.maximum(count, 1)
    std = np.sqrt(np.maximum(total_sq / np.maximum(count, 1) - mean * mean, 0.0))
    has = count > 0
    if not has.any():
        return 1.0
    span = float(np.max(mean[has] + 3 * std[has]) - np.min(mean[has] - 3 * std[has]))
    return span / 255.0 if span > 0 else 1.0


def section_flags(count: np.ndarray, total: np.ndarray, total_sq: np.ndarray, zeros: np.ndarray,
                  good: dict[int, np.ndarray], measurable: dict[int, np.ndarray], min_std: float,
                  max_zero_fraction: float, min_good_fraction: float) -> np.ndarray:
    """A code per section from its intensity statistics and the fraction of good patches per pair.

    `good[k]` (sections - k, gy, gx) marks the patches of pair (z, z + k) that matched well, among
    the `measurable` ones (whose match lies inside both sections).
    """
    n = len(count)
    mean = total / np.maximum(count, 1)
    std = np.sqrt(np.maximum(total_sq / np.maximum(count, 1) - mean * mean, 0.0))
    flags = np.full(n, OK, np.uint8)
    flags[zeros / np.maximum(count, 1) > max_zero_fraction] = MISSING
    flags[(flags == OK) & (std < min_std)] = BLANK
    best = np.zeros(n)  # the best fraction of good patches over a section's pairs
    has_pair = np.zeros(n, bool)
    for k, g in good.items():
        m = measurable[k].reshape(len(g), -1)
        frac = (g.reshape(len(g), -1) & m).sum(axis=1) / np.maximum(m.sum(axis=1), 1)
        for zs in (np.arange(n - k), np.arange(k, n)):
            best[zs] = np.maximum(best[zs], frac)
            has_pair[zs] = True
    flags[(flags == OK) & has_pair & (best < min_good_fraction)] = UNMATCHED
    return flags


# the matching cue on its own: a patch fails both neighbours by far more than chance (its correlation with each
# below this fraction of the pair's median patch correlation). Between real sections 50 nm apart a third to
# two thirds of the patches of a clean pair miss the pair's fit by chance, at correlations near the pair's
# median; a defect's patch correlates with neither neighbour.
MATCH_FRACTION = 0.7
# the image cue: an area of a section darker (a fold: layers of tissue on one another; dirt) or brighter (a
# crack: the support film) than either neighbour there by `IMAGE_CONTRAST` interquartile ranges of the section's
# smoothed intensities and by `NEIGHBOUR_RATIO` times more than the neighbours differ from each other there,
# beyond all but `EXTREME` % of either neighbour's intensities (tissue that only this section shows, an organelle
# starting, is rarely that dark or bright), at least `MIN_WIDTH` px wide (membranes are 3-6 px at 4 nm) and
# `MIN_AREA` px large
IMAGE_CONTRAST, NEIGHBOUR_RATIO, MIN_WIDTH, MIN_AREA, EXTREME = 1.0, 1.0, 10, 400, 0.5
# darker areas that line up long and thin are a fold however dark the neighbours' darkest tissue is (VNC's dark cells
# are as dark as a fold's three layers; dark organelles and cells are round): the areas taken together where, each
# widened by `FOLD_GAP` px, they touch (gaps up to twice that), with a length (4 standard deviations along their
# principal axis) of at least `FOLD_LENGTH` px, at least `FOLD_ELONGATION` times their width and a width of at most
# `FOLD_MAX_WIDTH` px (a wide darker band, uneven illumination or thickness, is no fold). On every section of the
# real stacks in order (VNC stack 1, ISBI 2012; each compared unaligned with its neighbours) no such group is longer
# than 127 px, nor 5.3 times its width; a 16 px fold inserted into VNC gives 198-264 px, 8.6-14 times its width of
# 18-23 px (benchmarks/results/defects.md)
FOLD_GAP, FOLD_LENGTH, FOLD_ELONGATION, FOLD_MAX_WIDTH = 8, 160, 6.0, 64
FOLD_IN_LINE = 0.8  # of a darker area's pixels on a fold's line (within its width and FOLD_GAP of its axis): the fold
SMOOTH = 4.0  # px: the Gaussian that removes the texture of the tissue before the intensities are compared
MIN_PATCH_FRACTION = 0.02  # of a patch's window in a defect area: the patch is flagged
# the image cue reads every section whole, three at a time (`image_cue`): sections larger than this get the
# matching cue only, so a task's memory stays bounded; it compares every `step`-th pixel, `step` chosen so that
# at most IMAGE_SIDE pixels a side are compared (about 0.15 s per section on one core)
MAX_IMAGE_PIXELS = 8192 * 8192
IMAGE_SIDE = 1024
# the image cue's tasks on the Dask cluster (`image_cue`): runs of neighbouring sections, four per worker thread
# present and at most this many sections each; a task reads its sections once (and the one before and after its
# run), three held at a time
RUN_SECTIONS = 64
NO_DATA_SIDE = 3  # exact zeros filling a square of this many compared pixels are no data (margins, padding)


def region_flags(good: dict[int, np.ndarray], measurable: dict[int, np.ndarray], flags: np.ndarray,
                 corr: dict[int, np.ndarray] | None = None, fits: dict[int, np.ndarray] | None = None,
                 images=None, nodes: tuple[np.ndarray, np.ndarray] | None = None, patch: int = 64) -> np.ndarray:
    """(sections, gy, gx): patches of unflagged sections (between two unflagged ones) with a fold, crack or
    dirt: the tissue continues from one neighbour to the other but this section does not show it there.
    Patches are taken at the same node in all three sections. Two cues, either flags a patch:

    - matching (`corr`, the patch correlations per pair): the patch matches neither neighbour (k = 1), by
      far (`MATCH_FRACTION`), while the two neighbours match each other there (k = 2). Low-texture areas,
      which match nothing, are not flagged. Without `corr`: failed and matched as `good` says (chance
      failures of real sections 50 nm apart are then flagged too).
    - image (`images`, the sections, with the pairs' `fits` and the mesh `nodes`): a wide area much darker
      or brighter than both neighbours, which agree with each other there (`image_defects`), computed by
      `image_cue` (on the Dask cluster this runs in, when there is one).
    """
    n = len(flags)
    g1, m1, g2 = good.get(1), measurable.get(1), good.get(2)
    out = np.zeros((n,) + (g1.shape[1:] if g1 is not None else (0, 0)), bool)
    if g1 is None or m1 is None or n < 3:
        return out
    ok = flags == OK
    usable = ok[1:-1] & ok[:-2] & ok[2:]  # the section and both its neighbours
    if g2 is not None:
        poor = m1 & ~g1  # pair (z, z + 1) measured and failed
        if corr is not None and 1 in corr:
            c1 = corr[1]
            typical = np.array([np.median(c[m]) if m.any() else 0.0 for c, m in zip(c1, m1)])
            poor &= c1 < MATCH_FRACTION * typical[:, None, None]
        below = poor[:-1]  # pair (z - 1, z) for z = 1 .. n - 2
        above = poor[1:]  # pair (z, z + 1)
        skip = g2  # pair (z - 1, z + 1) matched
        out[1:-1] = below & above & skip & usable[:, None, None]
    if images is not None and fits is not None and nodes is not None and 1 in fits:
        sections = np.nonzero(usable)[0] + 1
        found = image_cue(images, fits[1], sections, nodes, patch)
        if found is not None:
            out[sections] |= found
    return out


def image_cue(images, fits: np.ndarray, sections: np.ndarray, nodes: tuple[np.ndarray, np.ndarray],
              patch: int) -> np.ndarray | None:
    """(len(sections), gy, gx): the nodes whose patch window holds a defect area (`image_defects`) of each of
    `sections` between its neighbours, which the pairs' fits `fits` ((sections - 1, 2, 3): z to z + 1) map it
    onto; none where either fit is missing. None when the sections are too large (`MAX_IMAGE_PIXELS`) or
    `images` has no `extent`.

    `images`: the sections (`connectome.alignment.overlap.SectionImages`). Under a Dask client (the global step
    runs on a worker) the sections go to the cluster in runs (`_runs`), each a task that opens the volume at
    `images.address` and reads its sections once, three held at a time; elsewhere (or for `images` without an
    address) they are computed here, one after another, the same way."""
    extent = getattr(images, "extent", None)
    if extent is None or extent[0] * extent[1] > MAX_IMAGE_PIXELS:
        return None
    step = max(2, -(-max(extent) // IMAGE_SIDE))
    jobs = [(int(z), _inverse(fits[z - 1]), fits[z]) for z in sections
            if np.isfinite(fits[z - 1]).all() and np.isfinite(fits[z]).all()]
    found = np.zeros((len(sections), len(nodes[0]), len(nodes[1])), bool)
    if not jobs:
        return found
    address = getattr(images, "address", None)
    parts = _on_dask(address, jobs, nodes, patch, step) if address is not None else None
    if parts is None:
        parts = [_image_cue_run(images, jobs, nodes, patch, step)]
    where = {int(z): i for i, z in enumerate(sections)}
    for (z, _, _), mask in zip(jobs, (m for part in parts for m in part)):
        found[where[z]] = mask
    return found


def _image_cue_run(images, jobs: list[tuple[int, np.ndarray, np.ndarray]], nodes: tuple[np.ndarray, np.ndarray],
                   patch: int, step: int) -> np.ndarray:
    """(len(jobs), gy, gx): `_patches_touched` of `image_defects` for each (z, to z - 1, to z + 1) of `jobs`, in
    order; `images`: the sections, or the address of their volume (opened here, keeping three sections, so
    each is read once where the sections follow one another)."""
    if isinstance(images, str):
        from connectome.alignment.overlap import SectionImages

        images = SectionImages(images, keep=3)
    out = np.zeros((len(jobs), len(nodes[0]), len(nodes[1])), bool)
    for i, (z, to_previous, to_following) in enumerate(jobs):
        found = image_defects(images[z - 1], images[z], images[z + 1], to_previous, to_following, step)
        out[i] = _patches_touched(found, nodes, patch, step)
    return out


def _runs(jobs: list, threads: int) -> list[list]:
    """`jobs` (in section order) cut into runs of neighbouring sections: four per worker thread present, each
    of at most `RUN_SECTIONS` (a run reads the section before and after it too: the fewer runs, the fewer
    sections read twice)."""
    count = min(len(jobs), max(4 * max(1, threads), -(-len(jobs) // RUN_SECTIONS)))
    return [[jobs[i] for i in part] for part in np.array_split(np.arange(len(jobs)), count) if len(part)]


def _on_dask(address: str, jobs: list, nodes: tuple[np.ndarray, np.ndarray], patch: int,
             step: int) -> list[np.ndarray] | None:
    """`_image_cue_run` of each run of `jobs` (`_runs`) as a task on the Dask cluster this code runs in (from a
    worker, the global step: `worker_client`, which frees the step's thread for them), their results in order;
    None without a running client."""
    try:
        from distributed import get_client, worker_client
        from distributed.worker import get_worker

        client = get_client()
    except (ImportError, ValueError):
        return None
    if client.status != "running":
        return None

    def gather(c) -> list[np.ndarray]:
        runs = _runs(jobs, sum(c.nthreads().values()))
        futures = [c.submit(_image_cue_run, address, run, nodes, patch, step, pure=False, retries=2) for run in runs]
        return c.gather(futures)

    try:
        get_worker()
    except ValueError:
        return gather(client)
    with worker_client() as c:
        return gather(c)


def _inverse(transform: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(transform[:, :2])
    return np.hstack([a, (-a @ transform[:, 2])[:, None]])


def _no_data(image: np.ndarray, step: int) -> np.ndarray:
    """(every `step`-th pixel) bool: exact zeros filling a NO_DATA_SIDE square there (margins, padding; an isolated
    black pixel of tissue is data)."""
    from scipy.ndimage import binary_opening

    return binary_opening(image[::step, ::step] == 0, np.ones((NO_DATA_SIDE, NO_DATA_SIDE), bool))


def _warped(image: np.ndarray, transform: np.ndarray, shape: tuple[int, int], step: int) -> np.ndarray:
    """`image` sampled at transform(p) for the pixels p of a section of `shape`, every `step` px; NaN outside it
    and on its no data (`_no_data`)."""
    from scipy.ndimage import map_coordinates

    yy, xx = np.mgrid[0:shape[0]:step, 0:shape[1]:step].astype(np.float64)
    qy = transform[0, 0] * yy + transform[0, 1] * xx + transform[0, 2]
    qx = transform[1, 0] * yy + transform[1, 1] * xx + transform[1, 2]
    out = map_coordinates(image, [qy, qx], order=1, mode="nearest")
    empty = map_coordinates(_no_data(image, step).astype(np.uint8), [qy / step, qx / step], order=0, mode="nearest")
    inside = (qy >= 0) & (qy <= image.shape[0] - 1) & (qx >= 0) & (qx <= image.shape[1] - 1) & (empty == 0)
    return np.where(inside, out, np.nan)


def image_defects(previous: np.ndarray, section: np.ndarray, following: np.ndarray, to_previous: np.ndarray,
                  to_following: np.ndarray, step: int = 2) -> np.ndarray:
    """bool, every `step`-th pixel of `section`: its defect areas (a fold, dirt: darker; a crack: brighter)
    between its neighbours, which `to_previous` / `to_following` (2 x 3, on (y, x)) map it onto. Intensities are
    smoothed (`SMOOTH`); no data (`_no_data`: margins, padding) in any of the three, and near it, is never a
    defect; the thresholds are the module's `IMAGE_CONTRAST`, `NEIGHBOUR_RATIO`, `EXTREME`, `MIN_WIDTH`,
    `MIN_AREA` and, for darker areas lined up long and thin (a fold), `FOLD_GAP`, `FOLD_LENGTH`,
    `FOLD_ELONGATION` and `FOLD_MAX_WIDTH` in place of `EXTREME`."""
    from scipy.ndimage import binary_opening, gaussian_filter, label

    shape = section.shape
    sigma = SMOOTH / step
    here = np.where(_no_data(section, step), np.nan, section[::step, ::step].astype(np.float32))
    here = gaussian_filter(here, sigma)  # NaN spreads over the kernel: the edge of no data is no data too
    before = gaussian_filter(_warped(previous.astype(np.float32), to_previous, shape, step), sigma)
    after = gaussian_filter(_warped(following.astype(np.float32), to_following, shape, step), sigma)
    if not (np.isfinite(here).any() and np.isfinite(before).any() and np.isfinite(after).any()):
        return np.zeros(here.shape, bool)
    q25, q75 = np.nanpercentile(here, [25, 75])
    spread = max(float(q75 - q25), 1.0)
    radius = MIN_WIDTH / (2 * step)
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = yy * yy + xx * xx <= radius * radius
    found = np.zeros(here.shape, bool)
    with np.errstate(invalid="ignore"):
        apart = NEIGHBOUR_RATIO * np.abs(before - after)
        for sign in (-1.0, 1.0):  # darker, brighter
            # how much darker (brighter) than either neighbour
            d = np.minimum(sign * (here - before), sign * (here - after))
            candidate = binary_opening((d > IMAGE_CONTRAST * spread) & (d > apart), disk)
            if sign < 0:
                found |= _long_and_thin(candidate, step)
                limit = min(float(np.nanpercentile(v, EXTREME)) for v in (before, after))
                candidate &= here < limit
            else:
                limit = max(float(np.nanpercentile(v, 100 - EXTREME)) for v in (before, after))
                candidate &= here > limit
            labels, count = label(candidate)
            sizes = np.bincount(labels.ravel(), minlength=count + 1)
            keep = sizes * step * step >= MIN_AREA
            keep[0] = False
            found |= keep[labels]
    return found


def _long_and_thin(mask: np.ndarray, step: int) -> np.ndarray:
    """The areas of `mask` (every `step`-th pixel) whose group (the areas that touch when each is widened by
    `FOLD_GAP` section px) is at least `FOLD_LENGTH` section px long, `FOLD_ELONGATION` times longer than wide, at
    most `FOLD_MAX_WIDTH` px wide and `MIN_AREA` px large."""
    from scipy.ndimage import binary_dilation, label

    reach = FOLD_GAP / step
    r = int(np.ceil(reach))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    groups, count = label(binary_dilation(mask, yy * yy + xx * xx <= reach * reach))
    if count == 0:
        return np.zeros(mask.shape, bool)
    ys, xs = np.nonzero(mask)
    which = groups[ys, xs]
    n = np.bincount(which, minlength=count + 1).astype(np.float64)
    safe = np.maximum(n, 1.0)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(which, weights=values, minlength=count + 1) / safe

    my, mx = mean(ys.astype(np.float64)), mean(xs.astype(np.float64))
    dy, dx = ys - my[which], xs - mx[which]
    vyy, vxx, vxy = mean(dy * dy), mean(dx * dx), mean(dy * dx)
    half_gap = np.sqrt(((vyy - vxx) / 2) ** 2 + vxy ** 2)
    major, minor = (vyy + vxx) / 2 + half_gap, np.maximum((vyy + vxx) / 2 - half_gap, 0.0)
    length, width = 4 * np.sqrt(major) * step, 4 * np.sqrt(minor) * step
    large = n * step * step >= MIN_AREA
    keep = large & (length >= FOLD_LENGTH) & (length >= FOLD_ELONGATION * width) & (width <= FOLD_MAX_WIDTH)
    keep[0] = False
    # a fold's stretches over tissue its neighbours show as dark are no darker than them: the pieces between
    # such gaps that lie along a fold found (`FOLD_IN_LINE` of their pixels within its width and `FOLD_GAP`
    # of its axis) are the fold too
    angle = 0.5 * np.arctan2(2 * vxy, vyy - vxx)  # of each group's major axis, on (y, x)
    for k in np.nonzero(keep)[0]:
        off = np.abs(-np.sin(angle[k]) * (ys - my[k]) + np.cos(angle[k]) * (xs - mx[k]))
        within = np.bincount(which, weights=off <= width[k] / (2 * step) + reach, minlength=count + 1) / safe
        keep |= large & (within >= FOLD_IN_LINE)
    keep[0] = False
    return mask & keep[groups]


def _patches_touched(mask: np.ndarray, nodes: tuple[np.ndarray, np.ndarray], patch: int, step: int) -> np.ndarray:
    """(gy, gx): the nodes whose patch window holds at least `MIN_PATCH_FRACTION` of `mask` (every `step`-th
    pixel of the section)."""
    table = np.pad(np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1), ((1, 0), (1, 0)))
    half = patch // 2
    y0 = np.clip(-(-(nodes[0] - half) // step), 0, mask.shape[0])[:, None]  # the compared pixels inside
    y1 = np.clip(-(-(nodes[0] + half) // step), 0, mask.shape[0])[:, None]
    x0 = np.clip(-(-(nodes[1] - half) // step), 0, mask.shape[1])[None, :]
    x1 = np.clip(-(-(nodes[1] + half) // step), 0, mask.shape[1])[None, :]
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    area = np.maximum((y1 - y0) * (x1 - x0), 1)
    return inside >= MIN_PATCH_FRACTION * area
