"""Real serial sections as the tissue stage meets them: dimmed (uneven staining, beam current) and with
the exact-zero margins that `connectome align` leaves where nothing was imaged.

ISBI 2012 (Drosophila larva VNC, ssTEM) holds no myelin and no vessel, so any such label is false.
Figures for more gains, shifts and a rotation: benchmarks/results/tissue.md (`benchmarks/tissue.py --sections`).
"""

import numpy as np
import pytest
from scipy import ndimage as ndi

from connectome.cluster.client import ClusterConfig
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import execute, plan_run
from connectome.io import create_volume, open_volume
from connectome.tissue import classes as T

from conftest import data_file

BAD = (T.VESSEL, T.SOMA, T.MYELIN)  # excluded by default: a margin's edge must not create them
EDGE = 8  # px: "near the margin's edge"


@pytest.fixture(scope="module")
def isbi():
    """Sections 0 and 10 of ISBI 2012 train_raw, 320 x 320 crops (uint8)."""
    raw = np.load(data_file("isbi2012/isbi2012.npz"))["train_raw"]
    return np.ascontiguousarray(raw[[0, 10], 96:416, 96:416])


@pytest.fixture(scope="module")
def model():
    import torch

    from connectome.tissue.model import load_model

    torch.set_num_threads(1)
    return load_model("tissue")


def _shift(a, dy, dx):
    """`a` (.., Y, X) moved by whole pixels, exact zeros where nothing was imaged (as `align` leaves margins)."""
    out = np.zeros_like(a)
    h, w = a.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        a[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_a_dim_real_section_gets_the_classes_of_the_section_itself(isbi, model):
    """Was: x0.6 changed 10-16% of the labels, x0.3 made about 90% of each section `defect` (all excluded)."""
    from connectome.tissue.predict import classify_volume

    net, info = model
    base = classify_volume(net, info, isbi)
    assert np.mean(base == T.DEFECT) < 0.01 and np.mean(base == T.MYELIN) < 0.01
    for gain, offset in ((0.6, 0), (0.3, 0), (0.15, 30)):
        dim = np.clip(np.rint(isbi * gain + offset), 0, 255).astype(np.uint8)
        pred = classify_volume(net, info, dim)
        assert np.mean(pred == T.DEFECT) < 0.05, (gain, offset, np.mean(pred == T.DEFECT))
        assert np.mean(pred == base) > (0.97 if gain >= 0.3 else 0.85), (gain, offset, np.mean(pred == base))
    # ... while a blank frame (grey and white noise, as training's blanks) is not stretched into "tissue"
    noise = np.random.default_rng(0).normal(0, 1, (3, 160, 160)) * np.array([2.0, 4.0, 8.0])[:, None, None]
    blank = np.clip(np.rint(128 + noise), 0, 255).astype(np.uint8)
    assert np.mean(classify_volume(net, info, blank) == T.DEFECT) > 0.95
    # per section: one dim section in a stack does not change its neighbour
    mixed = np.stack([isbi[0], np.rint(isbi[1] * 0.3).astype(np.uint8)])
    np.testing.assert_array_equal(classify_volume(net, info, mixed)[0], base[0])


@pytest.mark.parametrize("dy,dx", [(24, -31), (-40, 17)])
def test_alignment_margins_are_defect_and_their_edge_adds_no_excluded_class(isbi, model, dy, dx):
    """Was: the margins read as myelin (about 97% of their pixels), none as defect."""
    from connectome.tissue.predict import classify_volume

    net, info = model
    base = classify_volume(net, info, isbi)
    stack = np.stack([isbi[0], _shift(isbi[1], dy, dx)])  # the second section moved by the alignment
    pred = classify_volume(net, info, stack)
    np.testing.assert_array_equal(pred[0], base[0])  # the unmoved section is untouched
    imaged = _shift(np.ones_like(isbi[1]), dy, dx).astype(bool)
    assert np.all(pred[1][~imaged] == T.DEFECT)
    ref = _shift(base[1], dy, dx)
    near = imaged & (ndi.distance_transform_edt(imaged) <= EDGE)
    new = near & np.isin(pred[1], BAD) & ~np.isin(ref, BAD)
    assert new.sum() <= 0.002 * near.sum(), (int(new.sum()), int(near.sum()))
    assert np.count_nonzero(imaged & (pred[1] == T.MYELIN)) <= np.count_nonzero(base[1] == T.MYELIN) + 10
    assert np.mean(pred[1][imaged] == ref[imaged]) > 0.95


def test_blockwise_equals_one_block_on_a_dim_section_with_margins(isbi, tmp_path, client):
    """Section levels come from whole sections and margins from a halo: small blocks == one block."""
    from connectome.tissue.model import load_model
    from connectome.tissue.predict import classify_volume

    raw = np.stack([np.rint(isbi[0, :128, :160] * 0.3).astype(np.uint8), _shift(isbi[1, :128, :160], 20, -27)])
    src = create_volume(str(tmp_path / "raw"), raw.shape, "uint8", (1, 64, 64), (50.0, 4.0, 4.0))
    src.write(src.box, raw)
    out = {}
    for name, block in (("blocks", (1, 48, 64)), ("one", (2, 128, 160))):
        config = RunConfig(input=str(tmp_path / "raw"), output=str(tmp_path / name),
                           blocks=BlocksConfig(shape=block, chunk_shape=(1, 16, 32)), cluster=ClusterConfig(),
                           stages=[StageConfig(stage="tissue", params={"allow_voxel_mismatch": True})])
        execute(plan_run(config), client, progress=False)
        out[name] = {n: open_volume(str(tmp_path / name / n)).read(src.box) for n in ("tissue", "tissue_mask")}
    for n in ("tissue", "tissue_mask"):
        np.testing.assert_array_equal(out["blocks"][n], out["one"][n])
    codes = out["one"]["tissue"]
    net, info = load_model("tissue")
    np.testing.assert_array_equal(codes, classify_volume(net, info, raw))
    imaged = _shift(np.ones((128, 160), bool), 20, -27)
    assert np.all(codes[1][~imaged] == T.DEFECT) and np.all(out["one"]["tissue_mask"][1][~imaged] == 1)
    assert np.mean(codes[0] == T.DEFECT) < 0.05
