"""Constrained MALIS weights: each pair of labelled voxels counted once, at the edge where it merges or splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from connectome.affinity.malis import grow_boundaries, malis_loss, malis_weights
from connectome.affinity.targets import affinities_from_labels
from connectome.core.errors import UserError
from connectome.models.unet import NEAREST_OFFSETS


def test_a_row_of_two_objects_counts_its_pairs_at_their_edges():
    labels = np.array([[[1, 1, 2, 2]]])
    affs = np.zeros((3, 1, 1, 4))
    affs[2, 0, 0, 1:] = (0.9, 0.8, 0.3)  # x edges (0,1), (1,2), (2,3)
    w = malis_weights(affs, labels)
    assert w[2, 0, 0].tolist() == [0, 1, 4, 1]  # 1 pair in each object, 2 x 2 between them
    assert w[:2].sum() == 0  # no z or y edges in a single row


def _two_objects(leak: float) -> tuple[np.ndarray, np.ndarray]:
    """Two 1 x 6 x 3 objects side by side along x (labels 1 and 2), predicted well inside, 0.1 across the
    contact except for one edge of affinity `leak`."""
    labels = np.zeros((1, 6, 6), np.int64)
    labels[..., :3] = 1
    labels[..., 3:] = 2
    affs = np.full((3, 1, 6, 6), 0.95)
    affs[2, :, :, 3] = 0.1  # the contact: x edges between column 2 and column 3
    affs[2, 0, 4, 3] = leak
    return affs, labels


def test_the_negative_pass_puts_every_merging_pair_on_the_strongest_contact_edge():
    affs, labels = _two_objects(leak=0.7)
    w = malis_weights(affs, labels)
    contact = w[2, 0, :, 3]
    assert contact[4] == 18 * 18  # every pair of the two objects merges at the leak
    assert np.delete(contact, 4).sum() == 0
    # the pairs inside each object are counted in the positive pass: 18 * 17 / 2 each
    assert w.sum() == pytest.approx(18 * 18 + 2 * (18 * 17 / 2))


def test_the_positive_pass_puts_a_split_on_the_weakest_link_of_a_bottleneck():
    labels = np.ones((1, 3, 6), np.int64)
    affs = np.full((3, 1, 3, 6), 0.9)
    affs[2, :, :, 3] = 0.05  # a wall across the object between columns 2 and 3 ...
    affs[2, 0, 1, 3] = 0.2  # ... with one weak opening
    w = malis_weights(affs, labels)
    assert w[2, 0, 1, 3] == 9 * 9  # the two halves (9 voxels each) join there
    assert w[2, 0, 0, 3] == w[2, 0, 2, 3] == 0
    assert w.sum() == pytest.approx(18 * 17 / 2)  # one object: only its pairs


def test_unlabelled_voxels_join_the_graph_but_no_pair():
    labels = np.array([[[1, 0, 2]]])
    affs = np.zeros((3, 1, 1, 3))
    affs[2, 0, 0, 1:] = (0.6, 0.4)
    w = malis_weights(affs, labels)
    assert w[2, 0, 0].tolist() == [0, 0, 1]  # voxels 0 and 2 meet at the weaker edge, through the label-0 voxel


def test_weights_refuse_affinities_of_another_shape():
    with pytest.raises(ValueError, match="do not fit"):
        malis_weights(np.zeros((3, 2, 2, 2)), np.ones((2, 2, 3), np.int64))


def test_grown_boundaries_cut_both_sides_of_a_contact_along_the_given_axes():
    labels = np.zeros((2, 1, 6), np.int64)
    labels[:, 0, :3] = 1
    labels[:, 0, 3:5] = 2  # x 5 is label 0 already
    labels[1, 0, :] = np.where(labels[1, 0] > 0, 3, 0)  # the upper section is one object: z contacts
    grown = grow_boundaries(labels, axes=(1, 2))
    assert grown[0, 0].tolist() == [1, 1, 0, 0, 2, 0]  # a two-voxel gap; a face on label 0 keeps its voxel
    assert grown[1, 0].tolist() == [3, 3, 3, 3, 3, 0]  # no contact within the section
    assert (grow_boundaries(labels)[0] == 0).sum() > (grown[0] == 0).sum()  # along z as well by default


def test_loss_is_zero_at_the_grown_targets_and_pulls_the_leak_down():
    affs, labels = _two_objects(leak=0.7)
    grown = grow_boundaries(labels)
    target = torch.from_numpy(affinities_from_labels(grown, NEAREST_OFFSETS)[0].astype(np.float32))[None]
    assert malis_loss(target, labels[None], (0, 0, 0)).item() == 0.0
    p = torch.from_numpy(affs.astype(np.float32))[None].requires_grad_(True)
    loss = malis_loss(p, labels[None], (0, 0, 0))
    loss.backward()
    grad = p.grad[0].numpy()
    assert loss.item() > 0
    # the objects merge at the leak, now between two gap voxels: it alone takes the merging pairs' gradient
    assert grad[2, 0, 4, 3] > 0 and np.unravel_index(np.argmax(np.abs(grad)), grad.shape) == (2, 0, 4, 3)


def test_training_with_malis_records_its_loss_and_refuses_a_negative_weight(tmp_path):
    from test_training import voronoi_volume

    from connectome.cli.main import main

    raw, labels = voronoi_volume((16, 32, 32), 20, seed=3)
    np.savez(tmp_path / "t.npz", raw=raw, labels=labels)
    common = ["train", "affinities", "--raw", f"{tmp_path}/t.npz#raw", "--labels", f"{tmp_path}/t.npz#labels",
              "--iterations", "4", "--patch", "12", "24", "24", "--out", str(tmp_path / "o"),
              "--voxel-size", "8", "8", "8"]
    assert main([*common, "--name", "m", "--malis-weight", "1"]) == 0
    provenance = json.loads((tmp_path / "o" / "m.json").read_text())["provenance"]
    assert provenance["settings"]["malis_weight"] == 1.0
    assert 0 < provenance["final_malis_loss"] < 1
    assert main([*common, "--name", "n"]) == 0
    assert json.loads((tmp_path / "o" / "n.json").read_text())["provenance"]["final_malis_loss"] is None
    # the MALIS term trains the network: the same seed and data without it give other weights (training on the CPU
    # is deterministic: two runs without it give the same weights to the bit)
    assert main([*common, "--name", "n2", "--malis-weight", "0"]) == 0
    weights = {n: torch.load(tmp_path / "o" / f"{n}.pt", weights_only=True) for n in ("m", "n", "n2")}
    assert all(torch.equal(weights["n"][k], weights["n2"][k]) for k in weights["n"])
    assert max((weights["m"][k].float() - weights["n"][k].float()).abs().max().item() for k in weights["m"]) > 1e-3
    with pytest.raises(UserError, match="--malis-weight -1"):
        from connectome.affinity.training import TrainSettings, train

        train(TrainSettings(raw=[f"{tmp_path}/t.npz#raw"], labels=[f"{tmp_path}/t.npz#labels"], name="x",
                            out=str(tmp_path / "x"), malis_weight=-1.0), log=lambda *a: None)
