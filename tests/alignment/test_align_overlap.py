"""The pair refinement on intensities over the whole overlap (`overlap`): it recovers a known affine
between two sections, patches moved to a wrong repeat are found again near it, and the chain with
the refinement switched on keeps the synthetic elastic bar."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from stacks import align, clean_stack, write_stack

from connectome.alignment.fit import apply
from connectome.alignment.overlap import SectionImages, refine_best, refine_pair, search_near
from connectome.alignment.patches import PatchSettings, SectionPair, match_sections, node_axis
from connectome.alignment.synthetic import Distortion, distort, residuals

pytestmark = pytest.mark.timeout(300)


def known_pair(side=256):
    """Section a and a section b with b(T p) = a(p) for a known affine T (rotation, stretch, shift)."""
    a = clean_stack(1, side, seed=5)[0].astype(np.float32)
    angle = np.deg2rad(1.5)
    m = 1.01 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    t = np.array([5.3, -7.8])
    qy, qx = np.mgrid[0:side, 0:side].astype(np.float64)
    inv = np.linalg.inv(m)
    py = inv[0, 0] * (qy - t[0]) + inv[0, 1] * (qx - t[1])
    px = inv[1, 0] * (qy - t[0]) + inv[1, 1] * (qx - t[1])
    b = map_coordinates(a, [py, px], order=3, mode="reflect").astype(np.float32)
    return a, b, np.hstack([m, t[:, None]])


def test_refine_pair_recovers_a_known_affine():
    a, b, truth = known_pair()
    corners = np.array([[0, 0], [0, 255], [255, 0], [255, 255], [128, 128]], float)
    start = truth.copy()
    start[:, 2] += [2.5, -2.0]  # a patch fit a few pixels off
    start[:, :2] = start[:, :2] @ np.array([[1, 0.01], [-0.01, 1]])
    assert np.abs(apply(start, corners) - apply(truth, corners)).max() > 2
    refined, agreement = refine_pair(a, b, start)
    assert np.abs(apply(refined, corners) - apply(truth, corners)).max() < 0.1
    assert agreement > 0.9


def test_patches_on_a_wrong_repeat_are_searched_again(tmp_path):
    a, b, truth = known_pair()
    path = write_stack(str(tmp_path / "raw"), np.stack([a, b]).astype(np.uint8))
    images = SectionImages(path)
    ys = node_axis(256, 64, 32)
    gy, gx = np.meshgrid(ys, ys, indexing="ij")
    points = np.stack([gy.ravel(), gx.ravel()], 1).astype(float)
    pair = SectionPair(images[0], images[1], (0, 0), images.extent)
    d, corr = match_sections(pair, ys, ys, PatchSettings(64, 20, 2))
    d, corr = d.reshape(-1, 2), corr.ravel()
    right = apply(truth, points) - points
    assert np.abs(d - right).max() < 0.3  # the matcher finds them where the tissue is
    wrong = d.copy()
    picked = np.arange(0, len(d), 3)
    wrong[picked] += [10.0, -4.0]  # as if those patches had matched a neighbouring repeat
    refined, _ = refine_best(images, 0, 1, [truth])
    # the patches' own correlations stand for equally good peaks on the wrong repeats: all are replaced
    again, _, count = search_near(images, 0, 1, refined, points, wrong, corr, 64, 4.0, 0.15, 0.1)
    assert count == len(picked)
    assert np.abs(again - right).max() < 0.3
    assert np.array_equal(np.delete(again, picked, 0), np.delete(d, picked, 0))  # the others are kept as measured
    # a patch whose own match is clearly better than anything near the pair's transform keeps it
    kept, _, count = search_near(images, 0, 1, refined, points, wrong, np.where(corr > 0, 2.0, corr), 64, 4.0,
                                 0.15, 0.1)
    assert count == 0 and np.array_equal(kept, wrong)


def test_chain_with_refinement_keeps_the_elastic_bar(tmp_path, client):
    clean = clean_stack(6, 192 + 96, seed=4)
    d = distort(clean, 48, Distortion(max_shift=30, max_rotation=2, elastic=3, wavelength=256), seed=2)
    out = str(tmp_path / "out")
    _, _, t = align(write_stack(str(tmp_path / "raw"), d.raw), out, client, solve={"refine": True})
    r = residuals(d, t["fields"], (t["nodes_y"], t["nodes_x"]), border=32, step=2)
    assert np.median(r) < 0.3 and r.max() < 1.0, (np.median(r), r.max())
    with open(os.path.join(out, "alignment", "solve.json")) as f:
        summary = json.load(f)
    # the refinement did reach the search near the refined fits: 11 patches measured on this stack (none can be
    # without `refine`: the search needs the sections' images, which only the refinement reads)
    assert summary["patches_searched_again"] > 0 and not summary["flagged_sections"], summary
