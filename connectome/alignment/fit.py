"""Robust fits of a translation, rigid or affine transform to patch displacements, with outliers rejected.

A fit maps node positions p (n, 2) to p + d; transforms are (2, 3) matrices [M | t] with q = M p + t.
"""

from __future__ import annotations

import warnings

import numpy as np

MODELS = ("translation", "rigid", "affine")
MIN_SUPPORT = 1 / 3  # a pair's fit must explain at least this share of its valid patches (`supported_fit`) ...
AFFINE_INLIERS = 6  # ... an affine at least this many of them, ...
MAX_SCALE = 1.25  # ... and stretch or shrink the section by at most this factor, else the rigid fit is used


def fit_transform(model: str, p: np.ndarray, q: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares transform of `model` taking p to q."""
    w = np.ones(len(p)) if w is None else np.asarray(w, float)
    sw = w.sum()
    if model == "translation" or len(p) < 3:
        t = (w[:, None] * (q - p)).sum(0) / max(sw, 1e-12)
        return np.hstack([np.eye(2), t[:, None]])
    if model == "rigid":
        pc, qc = (w[:, None] * p).sum(0) / sw, (w[:, None] * q).sum(0) / sw
        h = ((p - pc) * w[:, None]).T @ (q - qc)
        u, _, vt = np.linalg.svd(h)
        r = vt.T @ u.T
        if np.linalg.det(r) < 0:
            vt[-1] *= -1
            r = vt.T @ u.T
        return np.hstack([r, (qc - r @ pc)[:, None]])
    if model == "affine":
        x = np.hstack([p, np.ones((len(p), 1))]) * np.sqrt(w)[:, None]
        sol, *_ = np.linalg.lstsq(x, q * np.sqrt(w)[:, None], rcond=None)
        return sol.T
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


def apply(transform: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ transform[:, :2].T + transform[:, 2]


def _ransac_start(p: np.ndarray, d: np.ndarray, valid: np.ndarray, max_residual: float,
                  trials: int = 256) -> np.ndarray:
    """Inliers of the best affine through three valid nodes (a fixed random stream: deterministic)."""
    idx = np.nonzero(valid)[0]
    q = p + d
    best, best_count = valid.copy(), -1
    rng = np.random.default_rng(0)
    for _ in range(trials if len(idx) > 3 else 0):
        pick = rng.choice(idx, 3, replace=False)
        a = np.hstack([p[pick], np.ones((3, 1))])
        if abs(np.linalg.det(a)) < 1e-6:
            continue
        sol = np.linalg.solve(a, q[pick])
        res = np.linalg.norm(np.hstack([p, np.ones((len(p), 1))]) @ sol - q, axis=1)
        inl = valid & (res <= max_residual)
        count = int(inl.sum())
        if count > best_count:
            best, best_count = inl, count
    return best


def robust_fit(model: str, p: np.ndarray, d: np.ndarray, valid: np.ndarray, max_residual: float,
               rounds: int = 5) -> tuple[np.ndarray | None, np.ndarray]:
    """Fit `model` to the valid displacements robustly: the largest set of nodes that one affine
    through three of them explains within `max_residual` (RANSAC), then refits that drop the nodes
    farther than `max_residual` from the fit. Returns the fit (None without 3 inliers) and the inliers."""
    if valid.sum() < 3:
        return None, np.zeros_like(valid)
    inliers = _ransac_start(p, d, valid, max_residual)
    fit = None
    for _ in range(rounds):
        if inliers.sum() < 3:
            return None, np.zeros_like(valid)
        fit = fit_transform(model, p[inliers], p[inliers] + d[inliers])
        res = np.linalg.norm(apply(fit, p) - (p + d), axis=1)
        keep = valid & (res <= max_residual)
        if np.array_equal(keep, inliers):
            break
        inliers = keep
    return fit, inliers


def supported_fit(model: str, p: np.ndarray, d: np.ndarray, valid: np.ndarray, max_residual: float,
                  min_support: float = MIN_SUPPORT) -> tuple[np.ndarray | None, np.ndarray]:
    """`robust_fit`, kept only where the data support it: an affine fit with fewer than AFFINE_INLIERS inliers
    or a stretch beyond MAX_SCALE (three or four wrong patches that happen to agree extrapolate to hundreds of
    pixels across the section) falls back to the rigid fit; a fit that explains fewer than `min_support` of the
    valid patches is no fit (None), so the pair is left to the sections around it (`screen` asks it of pairs
    that skip sections only: neighbouring sections have no other link)."""
    fit, inliers = robust_fit(model, p, d, valid, max_residual)
    if model == "affine" and fit is not None:
        scale = np.linalg.svd(fit[:, :2], compute_uv=False)
        if inliers.sum() < AFFINE_INLIERS or scale.max() > MAX_SCALE or scale.min() < 1 / MAX_SCALE:
            fit, inliers = robust_fit("rigid", p, d, valid, max_residual)
    if fit is None or inliers.sum() < min_support * valid.sum():
        return None, np.zeros_like(valid)
    return fit, inliers


def local_outliers(d: np.ndarray, valid: np.ndarray, max_deviation: float) -> np.ndarray:
    """Valid nodes whose displacement differs from the median of their valid 3x3 neighbours by more
    than `max_deviation` pixels (grid shaped (gy, gx, 2) and (gy, gx))."""
    out = np.zeros(valid.shape, bool)
    if valid.sum() < 3:
        return out
    field = np.where(valid[..., None], d, np.nan)
    padded = np.pad(field, ((1, 1), (1, 1), (0, 0)), constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(0, 1))  # (gy, gx, 2, 3, 3)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(windows.reshape(*windows.shape[:3], 9), axis=-1)
    dev = np.abs(np.nan_to_num(field - med, nan=0.0)).max(-1)
    return valid & (dev > max_deviation)
