"""`connectome evaluate --skeletons` reads `connectome synth`'s ground_truth/skeletons.npz (nodes in nm) as well
as its own format (nodes in voxels): the same skeletons give the same ERL, in nm, either way."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectome.cli.main import main
from connectome.core.errors import UserError
from connectome.io import create_volume
from connectome.metrics import Skeletons
from connectome.synth import generate

VOXEL = (40.0, 8.0, 8.0)  # anisotropic: nm read as voxels, or divided along the wrong axes, would not pass
SHAPE = (16, 64, 64)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    volume = generate(SHAPE, VOXEL, seed=3)  # 12 skeletons with edges, spread over all 16 sections
    volume.save(str(d / "s"), chunk_shape=(8, 32, 32))
    skeletons = {i: (n.astype(np.float64), e) for i, (n, e) in volume.skeletons.items()}
    assert sum(len(e) for _, e in skeletons.values()) >= 20
    # the same skeletons in evaluate's own format: nodes divided by the voxel size, here rather than by the loader
    ids = sorted(i for i, (n, _) in skeletons.items() if len(n))
    starts = np.cumsum([0] + [len(skeletons[i][0]) for i in ids])
    Skeletons(np.concatenate([skeletons[i][0] / np.asarray(VOXEL) for i in ids]),
              np.concatenate([skeletons[i][1] + s for i, s in zip(ids, starts)]),
              np.concatenate([np.full(len(skeletons[i][0]), i, np.uint64) for i in ids])).save(str(d / "voxels.npz"))
    split = volume.labels.copy()  # every object cut in two between z 7 and 8
    split[8:][split[8:] != 0] += np.uint64(1_000_000)
    seg = create_volume(str(d / "split"), SHAPE, split.dtype, (8, 32, 32), VOXEL)
    seg.write(seg.box, split)
    return {"dir": d, "labels": str(d / "s" / "labels"), "split": str(d / "split"), "skeletons": skeletons,
            "nm": str(d / "s" / "ground_truth" / "skeletons.npz"), "voxels": str(d / "voxels.npz")}


def _evaluate(capsys, seg, gt, skeletons, *extra):
    assert main(["evaluate", "--seg", seg, "--gt", gt, "--skeletons", skeletons, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_synth_skeletons_give_the_erl_of_the_same_skeletons_in_voxels(synth, capsys):
    results = {}
    for seg in ("labels", "split"):
        from_nm = _evaluate(capsys, synth[seg], synth["labels"], synth["nm"])  # before: "skeleton file lacks [...]"
        from_voxels = _evaluate(capsys, synth[seg], synth["labels"], synth["voxels"])
        assert from_nm["voxel_size"] == list(VOXEL)
        for key in ("erl_nm", "max_erl_nm", "skeleton_length_nm", "splits", "merges", "skeletons"):
            assert from_nm[key] == pytest.approx(from_voxels[key], rel=1e-9), (seg, key)
        results[seg] = from_nm
    # in nm, as the synth file's own coordinates measure the skeletons
    lengths = [np.linalg.norm(n[e[:, 0]] - n[e[:, 1]], axis=1).sum() for n, e in synth["skeletons"].values()]
    assert results["labels"]["skeleton_length_nm"] == pytest.approx(sum(lengths), rel=1e-6)
    # the gt as its own segmentation scores the gt's ERL (not quite sum L^2 / sum L: a synth centreline may pass
    # through another cell's voxel); the cut between sections 7 and 8 adds splits and shortens the runs
    perfect, cut = results["labels"], results["split"]
    assert perfect["erl_nm"] == pytest.approx(perfect["max_erl_nm"]) == pytest.approx(cut["max_erl_nm"])
    assert cut["splits"] > perfect["splits"] and cut["erl_nm"] < 0.9 * perfect["erl_nm"]


def test_synth_skeletons_per_section(synth, capsys):
    from_nm = _evaluate(capsys, synth["labels"], synth["labels"], synth["nm"], "--per-section")
    from_voxels = _evaluate(capsys, synth["labels"], synth["labels"], synth["voxels"], "--per-section")
    assert from_nm["cross_section_edges"] == from_voxels["cross_section_edges"] > 0
    assert from_nm["erl_nm"] == pytest.approx(from_voxels["erl_nm"], rel=1e-9)


def test_a_skeleton_file_of_neither_format_is_refused_in_one_line(synth, tmp_path, capsys):
    bad = tmp_path / "other.npz"
    np.savez(bad, points=np.zeros((3, 3)), nodes_4=np.zeros((2, 3)))
    assert main(["evaluate", "--seg", synth["labels"], "--gt", synth["labels"], "--skeletons", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    for word in (str(bad), "nodes, edges, skeleton_ids", "ids, nodes_<id>, edges_<id>", "'points'"):
        assert word in err[0], (word, err[0])


def test_synth_format_needs_a_voxel_size_and_names_a_bad_key(synth, tmp_path):
    with pytest.raises(UserError, match="in nm; expected a voxel size"):
        Skeletons.load(synth["nm"])
    loaded = Skeletons.load(synth["nm"], VOXEL)
    assert loaded.nodes[:, 0].max() < SHAPE[0] and loaded.nodes[:, 1:].max() < SHAPE[1]  # voxels, not nm
    bad = tmp_path / "bad.npz"
    np.savez(bad, ids=np.array([1, 2], np.uint64), nodes_1=np.zeros((2, 3)), edges_1=np.array([[0, 1]]),
             nodes_2=np.zeros((2, 3)), edges_2=np.array([[0, 2]]))  # node 2 of a skeleton of 2 nodes
    with pytest.raises(UserError, match=r"bad.npz: key 'edges_2': expected node indices in 0..1, found 0..2"):
        Skeletons.load(str(bad), VOXEL)
    np.savez(bad, ids=np.array([1, 2], np.uint64), nodes_1=np.zeros((2, 3)), edges_1=np.array([[0, 1]]))
    with pytest.raises(UserError, match="found no key 'nodes_2'"):
        Skeletons.load(str(bad), VOXEL)
