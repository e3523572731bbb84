"""Displacements between two sections on a grid of patches: normalized cross-correlation from a
coarse resolution to the full one, then a sub-pixel Gauss-Newton refinement at full resolution.

Every window is placed in section coordinates (never clamped to a block), so a node's displacement
depends only on the two sections around it: blockwise equals one block. Templates are clamped inside
their section; a search window may reach past the other section, and the pixels beyond are masked
out of the correlation and of the refinement (a template near the edge of the sections' overlap is
matched on the part that overlaps).
A displacement d at node c means section A at c shows what section B shows at c + d.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.fft import irfft2, next_fast_len, rfft2
from scipy.ndimage import map_coordinates, spline_filter

REFINE_MARGIN = 4  # full-resolution pixels read beyond a template for the sub-pixel step
SEARCH_FAILED = -2.0  # the correlation recorded where no match was found inside the search window
MIN_OVERLAP = 0.5  # the least fraction of a template that must fall inside the other section to match


@dataclass(frozen=True)
class PatchSettings:
    """Template size and search range (full-resolution pixels), and the number of resolutions."""

    patch: int = 64
    search: int = 80
    levels: int = 3

    def factors(self, section: tuple[int, int]) -> list[int]:
        """Downsampling factors, coarse to fine; a level whose template exceeds the section is dropped."""
        out = [2 ** i for i in range(self.levels - 1, -1, -1)]
        return [f for f in out if f == 1 or self.patch * f <= min(section)]

    def template(self, f: int, section: tuple[int, int]) -> int:
        """Template side (full resolution) at factor f: `patch` f, less where the section leaves too
        little room to search around it, never below `patch`; a multiple of f."""
        room = min(section) - 2 * self.search
        return max(min(self.patch * f, room) // f * f, self.patch)

    def reach(self) -> int:
        """How far from a node any window reaches (the estimation stage's xy context)."""
        f = 2 ** (self.levels - 1)
        return self.patch * f // 2 + self.search + 2 * f + REFINE_MARGIN + 2


def node_axis(size: int, patch: int, stride: int) -> np.ndarray:
    """Node positions along one axis: every `stride` pixels, centred, a template's half from the faces."""
    n = max(1, (size - patch) // stride + 1)
    start = (size - (n - 1) * stride) // 2
    return start + stride * np.arange(n)


def _clamped(center: float, size: int, extent: int) -> int:
    """Start of a window of `size` centred near `center`, moved inside [0, extent)."""
    start = int(round(center - size / 2))
    return int(min(max(start, 0), max(extent - size, 0)))


def downsample(a: np.ndarray, f: int, dtype=np.float32) -> np.ndarray:
    """Means of f x f pixels (the last rows and columns that do not fill a box dropped), as `dtype`: the rows of
    each box added, then its columns (strided adds: a reduction over two axes of the 4-d view took 20x longer)."""
    if f == 1:
        return a.astype(dtype)
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    b = a[:h, :w].astype(dtype, copy=False)
    rows = b[0::f].copy()
    for i in range(1, f):
        rows += b[i::f]
    out = rows[:, 0::f].copy()
    for j in range(1, f):
        out += rows[:, j::f]
    return out / out.dtype.type(f * f)


def _parabola(c_minus: float, c0: float, c_plus: float) -> float:
    denom = c_minus - 2 * c0 + c_plus
    if not np.isfinite(denom) or denom >= 0:
        return 0.0
    return float(np.clip(0.5 * (c_minus - c_plus) / denom, -0.5, 0.5))


def _window_sums(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sums of `a` over every window of `shape` that fits inside it (integral image)."""
    h, w = shape
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
    np.cumsum(np.cumsum(a, axis=0), axis=1, out=c[1:, 1:])
    return c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]


def _fft_size(search: tuple[int, ...], template: tuple[int, ...]) -> tuple[int, int]:
    """The transform size of a correlation of `template` over `search` without wrap-around."""
    (sy, sx), (ty, tx) = search[:2], template[:2]
    return next_fast_len(sy + ty - 1, real=True), next_fast_len(sx + tx - 1, real=True)


def _correlation(f_image: np.ndarray, f_kernel: np.ndarray, size: tuple[int, int], search: tuple[int, ...],
                 template: tuple[int, ...]) -> np.ndarray:
    """The valid part of the correlation of a search window with a template, from their transforms (the template's
    flipped)."""
    return irfft2(f_image * f_kernel, size)[template[0] - 1:search[0], template[1] - 1:search[1]]


def _masked_ncc(search: np.ndarray, valid: np.ndarray, template: np.ndarray) -> np.ndarray:
    """NCC of the template at every offset inside `search`, over the pixels where `valid` (the search
    window reaches past the section: those pixels are not image); -1 where less than MIN_OVERLAP of
    the template overlaps valid pixels (Padfield's masked normalized cross-correlation). Window sums
    come from integral images, the three correlations with the template from one transform of each
    image and of the template and its square."""
    m = valid.astype(np.float64)
    s = np.where(valid, search - search[valid].mean(), 0.0)
    t = template.astype(np.float64) - template.mean()
    size = _fft_size(s.shape, t.shape)
    f_m, f_s = rfft2(m, size), rfft2(s, size)
    f_t, f_tt = rfft2(t[::-1, ::-1], size), rfft2((t * t)[::-1, ::-1], size)

    def corr(f_image: np.ndarray, f_kernel: np.ndarray) -> np.ndarray:
        return _correlation(f_image, f_kernel, size, s.shape, t.shape)

    n = np.maximum(np.rint(_window_sums(m, t.shape)), 0.0)
    safe = np.maximum(n, 1.0)
    sum_s, sum_t = _window_sums(s, t.shape), corr(f_m, f_t)
    var_s = _window_sums(s * s, t.shape) - sum_s ** 2 / safe
    var_t = corr(f_m, f_tt) - sum_t ** 2 / safe
    num = corr(f_s, f_t) - sum_s * sum_t / safe
    denom = np.sqrt(np.maximum(var_s, 0.0) * np.maximum(var_t, 0.0))
    ok = (n >= MIN_OVERLAP * t.size) & (denom > 1e-6 * t.size)
    return np.where(ok, num / np.where(ok, denom, 1.0), -1.0)


def _ncc(search: np.ndarray, template: np.ndarray) -> np.ndarray:
    """NCC of the template at every offset inside `search` (all of it image); -1 where the window is flat (its
    standard deviation below 1e-3, `_ncc_peak`'s rule for a flat template or search window)."""
    s = search.astype(np.float64) - search.mean()
    t = template.astype(np.float64) - template.mean()
    size = _fft_size(s.shape, t.shape)
    num = _correlation(rfft2(s, size), rfft2(t[::-1, ::-1], size), size, s.shape, t.shape)  # (t sums to 0)
    sum_s = _window_sums(s, t.shape)
    var_s = _window_sums(s * s, t.shape) - sum_s ** 2 / t.size
    ok = var_s > 1e-6 * t.size
    denom = np.sqrt(np.where(ok, var_s, 1.0) * float((t * t).sum()))
    return np.where(ok, num / denom, -1.0)


def _ncc_peak(search: np.ndarray, template: np.ndarray,
              valid: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Offset (sub-pixel, parabolic) of the template's best match in `search`, and its NCC
    (SEARCH_FAILED when the best match lies on the window's edge). Where `valid` marks part of the
    search window as outside the section, only the template's overlap with the section counts."""
    partial = valid is not None and not valid.all()
    inside = search[valid] if partial and valid is not None else search
    if template.std() < 1e-3 or inside.size == 0 or inside.std() < 1e-3:
        return np.zeros(2), 0.0
    ncc = _masked_ncc(search, valid, template) if partial and valid is not None else _ncc(search, template)
    i, j = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    peak = float(ncc[i, j])
    if ncc.shape[0] > 2 and ncc.shape[1] > 2 and (i in (0, ncc.shape[0] - 1) or j in (0, ncc.shape[1] - 1)):
        peak = SEARCH_FAILED  # the best match lies on the search window's edge: the true one may lie beyond it
    oy = i + (_parabola(ncc[i - 1, j], peak, ncc[i + 1, j]) if 0 < i < ncc.shape[0] - 1 else 0.0)
    ox = j + (_parabola(ncc[i, j - 1], peak, ncc[i, j + 1]) if 0 < j < ncc.shape[1] - 1 else 0.0)
    return np.array([oy, ox]), peak


class SectionPair:
    """Two sections held as arrays cut from a read box at `origin` (y, x) of a section of `extent`."""

    def __init__(self, a: np.ndarray, b: np.ndarray, origin: tuple[int, int], extent: tuple[int, int]):
        self.a, self.b = a, b
        self.origin = np.asarray(origin)
        self.extent = extent

    def _cut(self, img: np.ndarray, start: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        y, x = start[0] - self.origin[0], start[1] - self.origin[1]
        if y < 0 or x < 0 or y + size[0] > img.shape[0] or x + size[1] > img.shape[1]:
            raise ValueError(f"window at {start} size {size} leaves the read box at {tuple(self.origin)} "
                             f"{img.shape} (the stage's context is too small)")
        return img[y:y + size[0], x:x + size[1]]

    def _padded(self, img: np.ndarray, start: tuple[int, int], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """A window that may reach past the section: its pixels (0 outside) and where they are image."""
        lo = np.maximum(start, 0)
        hi = np.minimum(np.array(start) + np.array(size), self.extent)
        out = np.zeros(size, np.float32)
        valid = np.zeros(size, bool)
        if np.all(hi > lo):
            inner = (slice(lo[0] - start[0], hi[0] - start[0]), slice(lo[1] - start[1], hi[1] - start[1]))
            out[inner] = self._cut(img, (int(lo[0]), int(lo[1])), (int(hi[0] - lo[0]), int(hi[1] - lo[1])))
            valid[inner] = True
        return out, valid

    def _window(self, center: np.ndarray, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
        sy, sx = min(size, self.extent[0]), min(size, self.extent[1])
        return (_clamped(center[0], sy, self.extent[0]), _clamped(center[1], sx, self.extent[1])), (sy, sx)

    def match(self, node: np.ndarray, settings: PatchSettings) -> tuple[np.ndarray, float]:
        """Displacement at `node` (section coordinates) and the NCC at full resolution.

        A level whose best match lies on its search window's edge (a coarse template clamped at the
        section's border can see only part of the search range) is skipped: the next level searches
        the whole range again. Only a failure at full resolution fails the match."""
        d = np.zeros(2)
        corr = 0.0
        known = False
        factors = settings.factors(self.extent)
        for f in factors:
            for radius in ([6] if known else []) + [int(np.ceil(settings.search / f))]:
                d_new, corr = self._level(node, settings, f, radius, d)
                if corr != SEARCH_FAILED:
                    break
            known = corr != SEARCH_FAILED
            if known:
                d = d_new
        if corr == SEARCH_FAILED:
            return d, corr
        if corr > 0:
            d = self._refine(node, settings.patch, d)
        return d, corr

    def rematch(self, node: np.ndarray, settings: PatchSettings, predicted: np.ndarray,
                radius: int) -> tuple[np.ndarray, float]:
        """Displacement and NCC at `node` searched at full resolution only within `radius` pixels of
        a predicted displacement (SEARCH_FAILED where the best match lies on that window's edge)."""
        d, corr = self._level(node, settings, 1, radius, np.asarray(predicted, float))
        if corr == SEARCH_FAILED:
            return np.asarray(predicted, float), corr
        if corr > 0:
            d = self._refine(node, settings.patch, d)
        return d, corr

    def _level(self, node: np.ndarray, settings: PatchSettings, f: int, radius: int,
               d: np.ndarray) -> tuple[np.ndarray, float]:
        """The best match at factor f within `radius` (pixels at that factor) around displacement d."""
        t_start, t_size = self._window(node.astype(float), settings.template(f, self.extent))
        t_center = np.array(t_start) + np.array(t_size) / 2
        # the search window is centred on the prediction even where it reaches past the section: the
        # pixels beyond are masked out of the correlation, so a template that lies partly outside the
        # other section is still matched on its overlap (a clamped window would cut the range short)
        s_size = (t_size[0] + 2 * radius * f, t_size[1] + 2 * radius * f)
        s_start = (int(round(t_center[0] + d[0] - s_size[0] / 2)), int(round(t_center[1] + d[1] - s_size[1] / 2)))
        template = downsample(self._cut(self.a, t_start, t_size), f)
        pixels, inside = self._padded(self.b, s_start, s_size)
        search = downsample(pixels, f)
        valid = downsample(inside.astype(np.float32), f) > 0.999
        offset, corr = _ncc_peak(np.where(valid, search, 0.0).astype(np.float32), template, valid)
        if corr == SEARCH_FAILED:
            return d, corr
        return np.array(s_start) - np.array(t_start) + offset * f, corr

    def _refine(self, node: np.ndarray, patch: int, d: np.ndarray) -> np.ndarray:
        """Gauss-Newton on the windowed squared difference of standardised intensities, over an
        affine warp of the template about its centre (a patch may be sheared or stretched); the
        translation at the centre is the node's displacement."""
        start, size = self._window(node.astype(float), patch)
        tpl = self._cut(self.a, start, size).astype(np.float64)
        tpl = (tpl - tpl.mean()) / max(tpl.std(), 1e-6)
        lo = np.floor(np.array(start) + d).astype(int) - REFINE_MARGIN - patch // 8
        hi = lo + np.array(size) + 2 * (REFINE_MARGIN + patch // 8)
        lo_c = np.maximum(lo, 0)
        hi_c = np.minimum(hi, self.extent)
        if np.any(hi_c - lo_c < 4):
            return d
        region = spline_filter(self._cut(self.b, tuple(lo_c), tuple(hi_c - lo_c)).astype(np.float64), order=3)
        half = np.array(size, float) / 2
        yy, xx = np.mgrid[0:size[0], 0:size[1]].astype(np.float64)
        ry, rx = (yy - (half[0] - 0.5)) / half[0], (xx - (half[1] - 0.5)) / half[1]
        weight = np.outer(np.hanning(size[0] + 2)[1:-1], np.hanning(size[1] + 2)[1:-1]).ravel()
        params = np.array([d[0], d[1], 0.0, 0.0, 0.0, 0.0])  # dy, dx, then the linear part (per half side)
        start_d = d.copy()
        for _ in range(20):
            qy = yy + start[0] + params[0] + params[2] * ry + params[3] * rx - lo_c[0]
            qx = xx + start[1] + params[1] + params[4] * ry + params[5] * rx - lo_c[1]
            warped = map_coordinates(region, [qy, qx], order=3, mode="nearest", prefilter=False)
            # template pixels whose match lies past the other section carry no information
            inside = ((qy + lo_c[0] >= 0) & (qy + lo_c[0] <= self.extent[0] - 1)
                      & (qx + lo_c[1] >= 0) & (qx + lo_c[1] <= self.extent[1] - 1))
            if inside.mean() < MIN_OVERLAP:
                return start_d
            t_in = tpl if inside.all() else (tpl - tpl[inside].mean()) / max(tpl[inside].std(), 1e-6)
            std = max(warped[inside].std(), 1e-6)
            gy, gx = np.gradient(warped / std)
            r = (t_in - (warped - warped[inside].mean()) / std).ravel()
            jac = np.stack([gy, gx, gy * ry, gy * rx, gx * ry, gx * rx], axis=-1).reshape(-1, 6)
            w = weight * inside.ravel()
            h = jac.T @ (jac * w[:, None])
            g = jac.T @ (w * r)
            try:
                step = np.linalg.solve(h + np.eye(6) * 1e-6 * np.trace(h), g)
            except np.linalg.LinAlgError:
                return start_d
            params = params + np.clip(step, -1.0, 1.0)
            if np.abs(params[:2] - start_d).max() > 4 or np.abs(params[2:]).max() > patch / 8:
                return start_d
            if np.abs(step).max() < 1e-2:
                break
        # the affine warp's displacement at the node itself (the template's centre may lie half a pixel off)
        ny_, nx_ = (node - (np.array(start) + half - 0.5)) / half
        return np.array([params[0] + params[2] * ny_ + params[3] * nx_, params[1] + params[4] * ny_ + params[5] * nx_])


def match_sections(pair: SectionPair, nodes_y: np.ndarray, nodes_x: np.ndarray,
                   settings: PatchSettings) -> tuple[np.ndarray, np.ndarray]:
    """Displacements (len(nodes_y), len(nodes_x), 2) and correlations at the grid's nodes."""
    d = np.zeros((len(nodes_y), len(nodes_x), 2))
    corr = np.zeros((len(nodes_y), len(nodes_x)))
    for i, y in enumerate(nodes_y):
        for j, x in enumerate(nodes_x):
            d[i, j], corr[i, j] = pair.match(np.array([y, x]), settings)
    return d, corr
