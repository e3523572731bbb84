"""Masks in the affinity chain: masked voxels join no segment and nothing merges across them; the masked
chain in 18 blocks equals it in one; `segment --mask` (both methods) refuses a bad mask in one line.
The FFN canvas's mask is tested in tests/ffn/test_canvas.py."""

import json

import numpy as np
import pytest

from connectome.affinity.masking import excluded_edges
from connectome.cli.main import main
from connectome.cluster.client import ClusterConfig
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import execute, plan_run
from connectome.io import create_volume, open_volume

SHAPE, SMALL = (16, 96, 96), (8, 32, 32)
CUT = 9  # the masked section


def _read(address):
    vol = open_volume(address)
    return vol.read(vol.box)


def _brute_force(mask):
    out = np.zeros((3, *mask.shape), bool)
    for d in range(3):
        out[d] = mask
        here, below = [slice(None)] * 3, [slice(None)] * 3
        here[d], below[d] = slice(1, None), slice(0, -1)
        out[d][tuple(here)] |= mask[tuple(below)]
    return out


def test_excluded_edges_of_a_sub_box_equal_the_whole_volume_ones():
    mask = np.random.default_rng(0).random((6, 7, 8)) < 0.2
    whole = _brute_force(mask)
    np.testing.assert_array_equal(excluded_edges(mask, (False, False, False)), whole)
    for offset in [(2, 3, 1), (0, 2, 0), (3, 0, 4)]:
        has_lower = tuple(o > 0 for o in offset)
        start = tuple(o - int(h) for o, h in zip(offset, has_lower))
        got = excluded_edges(mask[start[0]:, start[1]:, start[2]:], has_lower)
        np.testing.assert_array_equal(got, whole[(slice(None), *(slice(o, None) for o in offset))])


@pytest.fixture(scope="module")
def stored(tmp_path_factory, client):
    """A synthetic volume, its affinities (made once) and a mask: one whole section plus a box."""
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("masked")
    generate(SHAPE, (8.0, 8.0, 8.0), seed=5).save(str(root), chunk_shape=SMALL)
    raw = str(root / "raw")
    config = RunConfig(input=raw, output=str(root / "up"), blocks=BlocksConfig(shape=SHAPE, chunk_shape=SMALL),
                       cluster=ClusterConfig(), stages=[StageConfig(stage="affinities")])
    execute(plan_run(config), client, progress=False)
    mask = np.zeros(SHAPE, np.uint8)
    mask[CUT] = 1
    mask[2:6, 40:70, 10:50] = 2  # any nonzero value excludes
    vol = create_volume(str(root / "mask"), SHAPE, np.uint8, SMALL, (8.0, 8.0, 8.0))
    vol.write(vol.box, mask)
    return raw, str(root / "up" / "affinities"), vol.address, mask != 0


def _chain(raw, affinities, mask, out, block, client):
    masked = {"affinities": "masked_affinities"} if mask else {"affinities": affinities}
    stages = ([StageConfig(stage="mask_affinities", inputs={"affinities": affinities, "mask": mask})] if mask else [])
    stages += [StageConfig(stage="fragments", inputs=masked), StageConfig(stage="agglomerate", inputs=masked),
               StageConfig(stage="relabel", params={"threshold": 0.5})]
    config = RunConfig(input=raw, output=str(out), blocks=BlocksConfig(shape=block, chunk_shape=SMALL),
                       cluster=ClusterConfig(), stages=stages)
    execute(plan_run(config), client, progress=False)
    return _read(str(out / "segmentation"))


def _spans_the_cut(seg):
    below, above = np.unique(seg[:CUT]), np.unique(seg[CUT + 1:])
    return np.intersect1d(below[below != 0], above[above != 0])


def test_masked_voxels_join_nothing_and_nothing_merges_across_them(stored, tmp_path, client):
    raw, affinities, mask_address, mask = stored
    plain = _chain(raw, affinities, None, tmp_path / "plain", SHAPE, client)
    assert _spans_the_cut(plain).size > 5  # without the mask, objects run through section CUT
    blocks = _chain(raw, affinities, mask_address, tmp_path / "blocks", SMALL, client)
    one = _chain(raw, affinities, mask_address, tmp_path / "one", SHAPE, client)
    assert np.all(blocks[mask] == 0) and np.all(blocks[~mask] != 0)
    assert _spans_the_cut(blocks).size == 0
    # 18 blocks == one block: the same partition, and the same masked affinities byte for byte
    pairs = np.unique(np.stack([blocks.ravel(), one.ravel()]), axis=1)
    assert pairs.shape[1] == np.unique(blocks).size == np.unique(one).size > 20
    np.testing.assert_array_equal(_read(str(tmp_path / "blocks" / "masked_affinities")),
                                  _read(str(tmp_path / "one" / "masked_affinities")))


def test_segment_mask_option_and_bad_masks(stored, tmp_path, capsys):
    raw, _, mask_address, mask = stored
    argv = ["segment", raw, str(tmp_path / "out"), "--block-shape", "8", "48", "48", "--workers", "2",
            "--no-progress", "--json", "--mask", mask_address]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [s["stage"] for s in summary["stages"]][:2] == ["affinities", "mask_affinities"]
    seg = _read(summary["segmentation"])
    assert np.all(seg[mask] == 0) and _spans_the_cut(seg).size == 0
    wrong_shape = create_volume(str(tmp_path / "small_mask"), (8, 96, 96), np.uint8, SMALL, (8.0, 8.0, 8.0))
    wrong_dtype = create_volume(str(tmp_path / "u64_mask"), SHAPE, np.uint64, SMALL, (8.0, 8.0, 8.0))
    for bad, expected in ((wrong_shape.address, "has shape [8, 96, 96], expected the raw volume's [16, 96, 96]"),
                          (wrong_dtype.address, "has dtype uint64, expected uint8 or bool")):
        for method in ("affinities", "ffn"):
            code = main(["segment", raw, str(tmp_path / f"bad-{method}"), "--method", method, "--mask", bad,
                         "--no-progress"])
            err = capsys.readouterr().err.strip()
            assert code == 2 and len(err.splitlines()) == 1 and expected in err and bad in err, err

