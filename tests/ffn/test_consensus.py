"""Over-segmentation consensus: pieces refine every run, join exactly the connected voxels that agree,
drop unsegmented and small pieces; `segment --method ffn --consensus` runs end to end."""

import json

import numpy as np
import pytest
from scipy import ndimage

from connectome.cli.main import main
from connectome.ffn.consensus import consensus
from connectome.io import open_volume
from connectome.metrics.voi import voi

from ffn_handset import compartments_volume, saved_handset_model


def _maps_to_one(pieces, labels):
    """Every piece (0 aside) lies inside one label of `labels`."""
    kept = pieces != 0
    pairs = np.unique(np.stack([pieces[kept], labels[kept]]), axis=1)
    return pairs.shape[1] == np.unique(pieces[kept]).size


def test_pieces_are_the_connected_agreements_of_all_runs():
    rng = np.random.default_rng(1)
    # two random partitions into blobs of different sizes, with unsegmented voxels in each
    runs = []
    for sigma, holes in ((2.0, 0.02), (3.0, 0.05)):
        field = ndimage.gaussian_filter(rng.normal(size=(12, 40, 40)), sigma)
        labels = np.digitize(field, np.quantile(field, [0.25, 0.5, 0.75])).astype(np.int32) + 1
        labels[rng.random(labels.shape) < holes] = 0
        runs.append(labels)
    pieces = consensus(runs)
    unsegmented = (runs[0] == 0) | (runs[1] == 0)
    assert np.all(pieces[unsegmented] == 0) and np.all(pieces[~unsegmented] > 0)
    for labels in runs:
        assert _maps_to_one(pieces, labels)  # a refinement of every run
    # two face-adjacent voxels that agree in both runs are in one piece, and a piece is connected
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(1, None), slice(0, -1)
        agree = ~unsegmented[tuple(a)] & ~unsegmented[tuple(b)]
        for labels in runs:
            agree &= labels[tuple(a)] == labels[tuple(b)]
        assert np.all(pieces[tuple(a)][agree] == pieces[tuple(b)][agree])
    for p in np.unique(pieces)[1:]:
        assert ndimage.label(pieces == p)[1] == 1
    assert np.unique(pieces).size - 1 > max(np.unique(r).size for r in runs)  # finer than either run


def test_small_pieces_are_dropped():
    a = np.ones((4, 10, 10), np.int32)
    b = np.ones_like(a)
    b[0, 0, 0] = 2  # a one-voxel disagreement
    assert np.unique(consensus([a, b], min_size=1)).tolist() == [1, 2]
    pieces = consensus([a, b], min_size=2)
    assert pieces[0, 0, 0] == 0 and np.all(pieces.ravel()[1:] == 1)


def test_segment_ffn_consensus_command(tmp_path, capsys, client):
    """The handset network fills the same objects in either seed order, so the consensus run equals the plain
    one; the block summaries name the pieces."""
    model = saved_handset_model(tmp_path)
    address = compartments_volume(tmp_path)
    results = {}
    for label, extra in (("plain", []), ("consensus", ["--consensus"])):
        argv = ["segment", address, str(tmp_path / label), "--method", "ffn", "--model", model,
                "--block-shape", "8", "32", "32", "--workers", "2", "--no-progress", "--json", *extra]
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        seg = open_volume(out["segmentation"])
        results[label] = seg.read(seg.box)
    assert np.unique(results["plain"]).size == 8  # 2 x 2 x 2 compartments
    assert voi(results["consensus"], results["plain"]) == (0.0, 0.0)


@pytest.mark.parametrize("bad", [[np.zeros((2, 3, 3), np.int32), np.zeros((2, 3, 4), np.int32)], []])
def test_bad_runs_are_refused(bad):
    with pytest.raises(ValueError):
        consensus(bad)
