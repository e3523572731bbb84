"""Pair fits kept only where the patches support them (`supported_fit`), and what that does to a real stack of
small sections aligned at the `align` defaults."""

from __future__ import annotations

import json

import numpy as np
from stacks import align, write_stack

from connectome.alignment.fit import apply, robust_fit, supported_fit
from connectome.io import open_volume

from conftest import data_file

GRID = np.stack(np.meshgrid(np.arange(32, 256, 64), np.arange(32, 256, 64), indexing="ij"), -1).reshape(-1, 2)


def _affine(scale: float, shift=(3.0, -2.0), angle: float = 0.01) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.hstack([scale * np.array([[c, -s], [s, c]]), np.array(shift)[:, None]])


def test_an_affine_of_a_few_agreeing_wrong_patches_is_not_kept():
    """Four of 16 patches that agree on a wild stretch, the rest scattered: `robust_fit` takes the stretch (it
    moves a corner by more than 100 px); `supported_fit` does not."""
    rng = np.random.default_rng(0)
    wild = np.array([[2.2, 0.0, -40.0], [0.0, 1.0, 30.0]])  # stretched 2.2 times along y
    d = rng.uniform(-60, 60, (len(GRID), 2))
    few = np.array([0, 1, 4, 5])
    d[few] = apply(wild, GRID[few].astype(float)) - GRID[few]
    valid = np.ones(len(GRID), bool)
    fit, inliers = robust_fit("affine", GRID.astype(float), d, valid, 8.0)
    assert fit is not None and inliers.sum() <= 5 and np.abs(apply(fit, GRID.astype(float)) - GRID).max() > 100
    fit, inliers = supported_fit("affine", GRID.astype(float), d, valid, 8.0)
    assert fit is None and not inliers.any()


def test_a_supported_affine_is_kept_and_an_implausible_stretch_falls_back_to_rigid():
    p = GRID.astype(float)
    true = _affine(1.04)
    d = apply(true, p) - p + np.random.default_rng(1).normal(0, 0.3, p.shape)
    fit, inliers = supported_fit("affine", p, d, np.ones(len(p), bool), 8.0)
    assert inliers.all() and np.abs(fit - true).max() < 0.5
    stretched = _affine(1.6, (0.0, 0.0), 0.0)  # sections do not grow by 60 %: the rigid fit of the same patches
    d = apply(stretched, p) - p
    fit, inliers = supported_fit("affine", p, d, np.ones(len(p), bool), 200.0)
    assert np.allclose(np.linalg.svd(fit[:, :2], compute_uv=False), 1.0)


def test_small_real_sections_align_without_distortion(tmp_path, client):
    """Ten real ISBI sections of 256 x 256 px at the align defaults (4 x 4 patches): before the fits were
    screened for support, three or four wrong patches of a pair two sections apart stretched whole sections
    (affine scales 0.47-1.68, fields up to 348 px, median match residual 8.9 px); now the fields stay within
    the shifts the neighbouring pairs measure and neighbouring sections correlate better than as stored."""
    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        raw = np.ascontiguousarray(f["train_raw"][6:16, 100:356, 100:356])
    path = write_stack(str(tmp_path / "raw"), raw, chunks=(10, 128, 128))
    _, _, t = align(path, str(tmp_path / "out"), client, block=(10, 256, 256), chunks=(10, 128, 128),
                    match={"patch": 64, "stride": 64, "search": 80})
    summary = json.loads((tmp_path / "out" / "alignment" / "solve.json").read_text())
    assert summary["match_residual_median_px"] < 2.0, summary
    assert np.abs(t["fields"]).max() < 40, np.abs(t["fields"]).max()
    scales = np.stack([np.linalg.svd(m[:, :2], compute_uv=False) for m in t["transforms"]])
    assert scales.max() < 1.15 and scales.min() > 1 / 1.15, scales
    aligned = open_volume(str(tmp_path / "out" / "aligned"))
    assert np.mean(_neighbour_ncc(aligned.read(aligned.box))) > np.mean(_neighbour_ncc(raw)) + 0.05


def _neighbour_ncc(stack: np.ndarray, margin: int = 48) -> list[float]:
    """Correlation of each pair of neighbouring sections in their centre (the warp's empty margins left out)."""
    out = []
    for a, b in zip(stack[:-1, margin:-margin, margin:-margin], stack[1:, margin:-margin, margin:-margin]):
        ok = (a > 0) & (b > 0)
        x, y = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
        out.append(float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum())))
    return out
