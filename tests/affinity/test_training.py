"""Affinity targets, augmentation, data addresses and a short real training run of the affinity U-Net."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from connectome.affinity.targets import affinities_from_labels, balance_weights
from connectome.core.errors import UserError
from connectome.training.augment import AugmentConfig, Augmenter
from connectome.training.data import load_pair, parse_address, relabel_per_section

NN = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


def test_affinities_of_a_hand_made_volume():
    labels = np.array(
        [
            [[1, 1, 2],
             [1, 0, 2]],
            [[1, 1, 2],
             [3, 3, 2]],
        ]
    )
    affs, mask = affinities_from_labels(labels, NN)
    assert affs.shape == (3, 2, 2, 3) and mask.shape == (3, 2, 2, 3)
    # channel 0: (z, y, x) with (z - 1, y, x); nothing below z = 0
    assert not mask[0, 0].any() and mask[0, 1].all()
    np.testing.assert_array_equal(affs[0, 1], [[1, 1, 1], [0, 0, 1]])
    # channel 1: with (z, y - 1, x)
    assert not mask[1, :, 0].any() and mask[1, :, 1].all()
    np.testing.assert_array_equal(affs[1, :, 1], [[1, 0, 1], [0, 0, 1]])
    # channel 2: with (z, y, x - 1)
    assert not mask[2, :, :, 0].any() and mask[2, :, :, 1:].all()
    np.testing.assert_array_equal(affs[2, :, :, 1:], [[[1, 0], [0, 0]], [[1, 0], [1, 0]]])
    assert (affs[~mask] == 0).all()


def test_long_range_offsets_and_boundary_label():
    labels = np.zeros((1, 1, 10), np.uint32)
    labels[0, 0, :4] = 5
    labels[0, 0, 6:] = 7
    affs, mask = affinities_from_labels(labels, [(0, 0, -3)])
    assert mask[0, 0, 0].tolist() == [False] * 3 + [True] * 7
    # x=3 links to x=0 (both 5); x=6..9 link to 3..6: only x=9 -> 6 is within label 7
    assert affs[0, 0, 0].tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 1]


def test_balance_weights_equalise_classes():
    rng = np.random.default_rng(0)
    affs = (rng.random((2, 3, 4, 8, 8)) < 0.2).astype(np.float32)
    mask = rng.random(affs.shape) < 0.9
    w = balance_weights(affs, mask)
    assert (w[~mask] == 0).all()
    for c in range(3):
        pos = w[:, c][(affs[:, c] > 0.5) & mask[:, c]].sum()
        neg = w[:, c][(affs[:, c] < 0.5) & mask[:, c]].sum()
        assert pos == pytest.approx(neg, rel=1e-5)


def _blocks(shape=(24, 40, 40), size=7) -> np.ndarray:
    """Labels in cubes of `size` voxels (ids 1..), with a 1-voxel boundary (0) between cubes."""
    idx = np.indices(shape) // size
    labels = (idx[0] * 36 + idx[1] * 6 + idx[2] + 1).astype(np.uint8)  # < 256 for the default shape
    on_edge = (np.indices(shape) % size == 0).any(axis=0)
    labels[on_edge] = 0
    return labels


@pytest.mark.parametrize("anisotropic", [False, True])
def test_augmentation_keeps_raw_and_labels_aligned(anisotropic):
    labels = _blocks()
    raw = labels.copy()  # raw == labels: every geometric change must treat them alike
    cfg = AugmentConfig(anisotropic=anisotropic, intensity=False, raw_order=0, elastic_sigma=2.0,
                        elastic_spacing=(4, 8, 8), shifted_sections=0.3 if anisotropic else 0.0)
    aug = Augmenter(cfg, seed=3)
    changed = 0
    for _ in range(4):
        r, l = aug(raw, labels, (8, 16, 16))
        assert r.shape == l.shape == (8, 16, 16)
        np.testing.assert_array_equal(np.rint(r * 255).astype(np.uint8), l)
        changed += not np.array_equal(l, labels[:8, :16, :16])
    assert changed > 0  # the transform did move things


def test_linear_raw_interpolation_stays_close_to_the_labels():
    labels = _blocks((36, 60, 60), size=12)
    cfg = AugmentConfig(intensity=False, raw_order=1)
    r, l = Augmenter(cfg, seed=1)(labels, labels, (16, 32, 32))
    agree = np.abs(r * 255 - l) < 0.5
    # only voxels next to a label change blend their raw value
    inside = ndimage.minimum_filter(l, 3) == ndimage.maximum_filter(l, 3)
    assert inside.mean() > 0.3
    assert agree[inside].mean() > 0.98


def test_anisotropic_augmentation_keeps_sections():
    z = np.broadcast_to(np.arange(20, dtype=np.uint8)[:, None, None] * 10, (20, 64, 64)).copy()
    cfg = AugmentConfig(anisotropic=True, intensity=False, raw_order=0, elastic_sigma=3.0,
                        shifted_sections=0.5)
    for seed in range(3):
        r, l = Augmenter(cfg, seed)(z, z, (6, 32, 32))
        for section in l:
            assert len(np.unique(section)) == 1  # a section comes from one source section
        steps = np.abs(np.diff(l[:, 0, 0].astype(int)))
        assert set(steps.tolist()) <= {10}  # consecutive sections stay neighbours (or flip together)


def test_augmentation_is_deterministic_by_seed():
    labels = _blocks()
    raw = (labels * 2).astype(np.uint8)
    cfg = AugmentConfig(anisotropic=True, missing_sections=0.2, shifted_sections=0.2)
    a = [Augmenter(cfg, seed=7)(raw, labels, (8, 16, 16)) for _ in range(2)]
    b = Augmenter(cfg, seed=8)(raw, labels, (8, 16, 16))
    np.testing.assert_array_equal(a[0][0], a[1][0])
    np.testing.assert_array_equal(a[0][1], a[1][1])
    assert not np.array_equal(a[0][0], b[0])


def test_z_range_addresses(tmp_path):
    raw = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    labels = np.arange(10 * 4 * 4, dtype=np.uint32).reshape(10, 4, 4) % 7 + 1
    np.savez(tmp_path / "v.npz", raw=raw, labels=labels)
    assert parse_address("a.npz#raw[3:7]") == ("a.npz#raw", slice(3, 7))
    assert parse_address("a.npz#raw[:-2]") == ("a.npz#raw", slice(None, -2))
    assert parse_address("some/zarr") == ("some/zarr", slice(None))
    pair = load_pair(f"{tmp_path}/v.npz#raw[2:5]", f"{tmp_path}/v.npz#labels[2:5]")
    np.testing.assert_array_equal(pair.raw, raw[2:5])
    with pytest.raises(UserError, match="no sections"):
        load_pair(f"{tmp_path}/v.npz#raw[5:5]", f"{tmp_path}/v.npz#labels[5:5]")


def test_relabel_per_section_separates_repeated_ids():
    labels = np.array([[[1, 1, 0]], [[1, 2, 2]]], np.uint32)
    out = relabel_per_section(labels)
    assert out[0, 0, 0] == out[0, 0, 1] and out[0, 0, 2] == 0
    assert out[1, 0, 0] != out[0, 0, 0] and out[1, 0, 1] == out[1, 0, 2] != out[1, 0, 0]


def voronoi_volume(shape, n_cells, seed) -> tuple[np.ndarray, np.ndarray]:
    """Tiny synthetic EM-like volume: Voronoi cells (ids), dark 1-voxel membranes, noise."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.int32)
    pts = [tuple(rng.integers(0, s) for s in shape) for _ in range(n_cells)]
    for i, p in enumerate(pts, 1):
        seeds[p] = i
    _, nearest = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[tuple(nearest)].astype(np.uint32)
    edge = np.zeros(shape, bool)
    for axis in range(3):
        d = np.diff(cells, axis=axis) != 0
        sl = [slice(None)] * 3
        sl[axis] = slice(1, None)
        edge[tuple(sl)] |= d
    labels = np.where(edge, 0, cells).astype(np.uint32)
    raw = np.where(edge, 60, 190) + rng.normal(0, 12, shape)
    return np.clip(raw, 0, 255).astype(np.uint8), labels


def test_short_training_run_lowers_the_loss_and_writes_a_model(tmp_path):
    from connectome.cli.main import main
    from connectome.models import load_model, predict_affinities

    raw, labels = voronoi_volume((24, 48, 48), 40, seed=0)
    vraw, vlabels = voronoi_volume((16, 32, 32), 12, seed=1)
    np.savez(tmp_path / "t.npz", raw=raw, labels=labels, vraw=vraw, vlabels=vlabels)
    out = tmp_path / "run"
    rc = main([
        "train", "affinities", "--raw", f"{tmp_path}/t.npz#raw", "--labels", f"{tmp_path}/t.npz#labels",
        "--val-raw", f"{tmp_path}/t.npz#vraw", "--val-labels", f"{tmp_path}/t.npz#vlabels",
        "--name", "tiny", "--out", str(out), "--iterations", "24", "--batch-size", "2",
        "--patch", "16", "24", "24", "--seed", "0", "--val-every", "12", "--voxel-size", "8", "8", "8",
        "--lr", "0.01",  # fast enough that the two validations differ (3.45 at 12, 1.49 at 24)
    ])
    assert rc == 0
    for name in ("tiny.pt", "tiny.json", "tiny-loss.png", "tiny-log.json"):
        assert (out / name).is_file(), name
    log = json.loads((out / "tiny-log.json").read_text())
    losses = log["losses"]
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
    meta = json.loads((out / "tiny.json").read_text())
    prov = meta["provenance"]
    assert prov["iterations"] == 24 and prov["wall_time_s"] > 0 and "cpu" in prov["device"]
    # each validation keeps its best threshold, the run keeps its best validation, and ships that threshold
    history, best = prov["validation"]["history"], prov["validation"]["best"]
    assert [h["iteration"] for h in history] == [12, 24]
    for entry in log["validation"]:
        top = min(entry["all"], key=lambda s: s["voi"])
        assert entry["voi"] == top["voi"] and entry["threshold"] == top["threshold"]
    assert len({h["voi"] for h in history}) == 2  # the two validations differ: keeping the worst would show
    assert best["voi"] == min(h["voi"] for h in history)
    assert best["iteration"] == min(history, key=lambda h: h["voi"])["iteration"]
    assert meta["agglomeration"]["threshold"] == best["threshold"]
    # the saved weights are the best validation's checkpoint: they score its VOI again (up to the float noise of
    # folding batch norm on loading: 1.51 against 1.49; the other validation scored 3.45)
    from connectome.affinity.training import score_pair
    from connectome.training.data import Pair

    rescored = score_pair(load_model(str(out / "tiny.pt"), device="cpu"), Pair("v", "l", vraw, vlabels),
                          [best["threshold"]], labels_2d=False)
    assert rescored[0]["voi"] == pytest.approx(best["voi"], abs=0.1)
    assert meta["voxel_size"] == [8.0, 8.0, 8.0]
    assert (out / "tiny-loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = load_model(str(out / "tiny.pt"), device="cpu")
    affs = predict_affinities(model, vraw[:, :32, :32])
    assert affs.shape == (3, 16, 32, 32) and affs.dtype == np.float32

    # fine-tuning from the result keeps its normalisation, its inference settings and small-segment rule (as a
    # shipped model's json holds them) and records where it started
    shipped_like = dict(meta, inference={"tta": 4, "blank_band": 12},
                        agglomeration=dict(meta["agglomeration"], absorb={"min_voxels": 200, "max_extent": [4, 16, 16],
                                                                          "min_share": 0.5}))
    (out / "tiny.json").write_text(json.dumps(shipped_like))
    common = ["--raw", f"{tmp_path}/t.npz#raw", "--labels", f"{tmp_path}/t.npz#labels", "--iterations", "2",
              "--patch", "16", "24", "24", "--init", str(out / "tiny.pt")]
    assert main(["train", "affinities", *common, "--name", "tuned", "--out", str(out)]) == 0
    tuned = json.loads((out / "tuned.json").read_text())
    assert tuned["normalisation"]["mean"] == meta["normalisation"]["mean"]
    tuned_info = load_model(str(out / "tuned.pt"), device="cpu").info
    assert (tuned_info.tta, tuned_info.blank_band) == (4, 12) and "tiny.pt" in tuned["inference"]["note"]
    assert tuned_info.absorb == {"min_voxels": 200, "max_extent": [4, 16, 16], "min_share": 0.5}
    assert tuned["voxel_size"] == [8.0, 8.0, 8.0]  # an npz carries none: the --init model's (not a made-up 1 nm)
    assert tuned["provenance"]["init"]["iterations"] == 24
    assert main(["train", "affinities", *common, "--name", "bad", "--out", str(out), "--arch", "aniso"]) == 2
    # with validation, the --init weights are validated first (iteration 0) and kept unless a checkpoint beats them
    validated = ["--val-raw", f"{tmp_path}/t.npz#vraw", "--val-labels", f"{tmp_path}/t.npz#vlabels", "--lr", "0.5"]
    assert main(["train", "affinities", *common, *validated, "--name", "kept", "--out", str(out)]) == 0
    kept = json.loads((out / "kept.json").read_text())["provenance"]["validation"]
    assert [h["iteration"] for h in kept["history"]] == [0, 2]
    assert kept["history"][0]["voi"] == pytest.approx(best["voi"], abs=1e-6)  # the --init model's own score
    # at lr 0.5 two steps ruin it (VOI 3.45 against 1.48): the result is the --init weights, unchanged
    assert kept["history"][1]["voi"] > kept["history"][0]["voi"] and kept["best"]["iteration"] == 0
    import torch

    start, result = (torch.load(out / f"{n}.pt", weights_only=True) for n in ("tiny", "kept"))
    assert start.keys() == result.keys() and all(torch.equal(start[k], result[k]) for k in start)

    # a wider network starts from the narrow one (widened) and says so; a narrower one is refused
    wide = ["--base-channels", "12", "--max-channels", "96"]
    assert main(["train", "affinities", *common, "--name", "wide", "--out", str(out), *wide]) == 0
    widened = json.loads((out / "wide.json").read_text())
    assert widened["architecture"]["base_channels"] == 12 and widened["provenance"]["init"]["channels"] == [8, 24, 64]
    assert load_model(str(out / "wide.pt"), device="cpu").info.config.channels == (12, 36, 96)
    again = ["--raw", f"{tmp_path}/t.npz#raw", "--labels", f"{tmp_path}/t.npz#labels", "--iterations", "1",
             "--patch", "16", "24", "24", "--init", str(out / "wide.pt"), "--out", str(out)]
    assert main(["train", "affinities", *again, "--name", "again"]) == 0  # without options: the --init's width
    assert load_model(str(out / "again.pt"), device="cpu").info.config.channels == (12, 36, 96)
    assert main(["train", "affinities", *again, "--name", "narrow", "--base-channels", "8", "--max-channels", "64"]) == 2
    assert main(["train", "affinities", *again, "--name", "narrow", "--max-channels", "0"]) == 2
    assert not (out / "narrow.pt").exists()


def test_training_refuses_validation_sections_in_the_training_set(tmp_path):
    from connectome.affinity.training import TrainSettings, train

    raw, labels = voronoi_volume((16, 24, 24), 10, seed=0)
    np.savez(tmp_path / "t.npz", raw=raw, labels=labels)
    a = f"{tmp_path}/t.npz"
    settings = TrainSettings(raw=[f"{a}#raw[0:10]"], labels=[f"{a}#labels[0:10]"],
                             val_raw=f"{a}#raw[8:16]", val_labels=f"{a}#labels[8:16]",
                             name="x", out=str(tmp_path / "o"), iterations=1, patch=(8, 16, 16))
    with pytest.raises(UserError, match="overlaps"):
        train(settings, log=lambda *a: None)


def test_two_d_labels_mask_z_affinities():
    from connectome.affinity.training import TrainSettings, _batch, augment_config
    from connectome.training.data import Pair

    raw, labels = voronoi_volume((12, 48, 48), 30, seed=2)
    p = Pair("r", "l", raw, labels)
    offsets = NN + ((-2, 0, 0), (0, -3, 0))
    settings = TrainSettings(raw=[], labels=[], name="x", out="x", patch=(4, 32, 32), labels_2d=True,
                             arch="aniso", batch_size=2)
    r, t, m, lsd, _, patch_labels = _batch([p], np.array([1.0]), Augmenter(augment_config("aniso"), 0), settings,
                                           offsets, (0, 2, 2), np.random.default_rng(0), np.array([False]),
                                           (40, 4, 4))
    assert lsd is None  # no descriptors unless asked
    assert patch_labels == [None, None]  # per-section labels: no 3-D labels for the MALIS loss
    assert r.shape == (2, 1, 4, 32, 32) and t.shape == m.shape == (2, 5, 4, 32, 32)
    assert not m[:, 0].any() and not m[:, 3].any()  # every z offset is out of the loss
    assert m[:, 1].any() and m[:, 4].any()
    assert not m[:, 1, :, :2].any() and not m[:, 1, :, -2:].any()  # loss margin


def test_section_labelled_volumes_mask_only_their_own_z_affinities():
    """--section-raw/--section-labels: a 2-D labelled volume beside a 3-D one loses only its own z loss."""
    from connectome.affinity.training import TrainSettings, _batch, augment_config, sampling_weights
    from connectome.training.data import Pair

    raw, labels = voronoi_volume((12, 48, 48), 30, seed=2)
    pairs = [Pair("r3", "l3", raw, labels), Pair("r2", "l2", raw, labels)]
    offsets = NN + ((-2, 0, 0), (0, -3, 0))
    settings = TrainSettings(raw=["r3"], labels=["l3"], section_raw=["r2"], section_labels=["l2"], name="x",
                             out="x", patch=(4, 32, 32), arch="aniso", batch_size=1)
    two_d = np.array([False, True])
    aug = Augmenter(augment_config("aniso"), 0)
    for only, z_trained in ((0, True), (1, False)):
        weights = np.eye(2)[only]
        _, _, m, _, _, patch_labels = _batch(pairs, weights, aug, settings, offsets, (0, 2, 2),
                                             np.random.default_rng(0), two_d, (40, 4, 4))
        assert m[:, 0].any() == z_trained and m[:, 3].any() == z_trained
        assert (patch_labels[0] is not None) == z_trained
        assert m[:, 1].any() and m[:, 4].any()
    # the 2-D volumes together get at most half the patches when 3-D labels exist
    w = sampling_weights(np.array([1e6, 4e6, 9e6]), np.array([False, True, True]))
    assert w[0] == pytest.approx(0.5) and w[1] / w[2] == pytest.approx(2 / 3)
    w = sampling_weights(np.array([9e6, 1e6]), np.array([False, True]))
    assert w[0] == pytest.approx(0.75)  # already under half: sqrt-of-size shares kept


def test_train_command_reports_bad_input_in_one_line(tmp_path, capsys):
    from connectome.cli.main import main

    raw, labels = voronoi_volume((12, 16, 16), 5, seed=0)
    np.savez(tmp_path / "t.npz", raw=raw, labels=labels)
    a = f"{tmp_path}/t.npz"
    rc = main(["train", "affinities", "--raw", f"{a}#raw", "--labels", f"{a}#nope", "--name", "x",
               "--out", str(tmp_path / "o"), "--iterations", "1", "--patch", "12", "16", "16"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "nope" in err
    rc = main(["train", "affinities", "--raw", f"{a}#raw", "--labels", f"{a}#labels", "--name", "x",
               "--out", str(tmp_path / "o"), "--iterations", "1", "--patch", "8", "15", "16"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "multiple" in err
    # an npz carries no voxel size: the model would have recorded 1 nm voxels (and been refused by `segment`)
    rc = main(["train", "affinities", "--raw", f"{a}#raw", "--labels", f"{a}#labels", "--name", "x",
               "--out", str(tmp_path / "o"), "--iterations", "1", "--patch", "12", "16", "16"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "carries no voxel size; give --voxel-size Z Y X" in err, err
    assert not (tmp_path / "o" / "x.pt").exists()


def test_the_first_and_final_loss_of_a_short_run_are_not_one_mean():
    from connectome.training.curves import loss_ends

    assert loss_ends([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], 10) == pytest.approx((0.8, 0.5))  # halves, not all six twice
    assert loss_ends(list(np.linspace(1, 0, 100)), 10) == pytest.approx((0.9545, 0.0455), abs=1e-3)
    assert loss_ends([0.7], 10) == (0.7, 0.7) and loss_ends([], 10) == (None, None)


def test_negative_label_ids_are_refused_in_training(tmp_path):
    """(audit45) An "ignore" label such as -1 was renumbered into an ordinary object and learned from (`evaluate`
    refuses it); training refuses it too, naming a voxel."""
    raw = np.zeros((4, 8, 8), np.uint8)
    labels = (np.arange(4 * 8 * 8).reshape(4, 8, 8) % 5 + 1).astype(np.int32)
    labels[2, 3, 4] = -1
    np.savez(tmp_path / "v.npz", raw=raw, labels=labels)
    with pytest.raises(UserError, match=r"v.npz#labels: negative object id -1 at voxel \(2, 3, 4\) \(z, y, x\); .* "
                                        r"map an 'ignore' label such as -1 to 0 first$"):
        load_pair(f"{tmp_path}/v.npz#raw", f"{tmp_path}/v.npz#labels")


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_a_wrapped_ignore_label_is_refused_in_training(tmp_path, dtype):
    """-1 written unsigned (the largest uint32 / uint64, CREMI-style files' 'ignore' label) was learned as one
    object spanning every voxel it covers (lab walk-through); uint8 / uint16 maxima stay ordinary ids."""
    raw = np.zeros((4, 8, 8), np.uint8)
    labels = (np.arange(4 * 8 * 8).reshape(4, 8, 8) % 5 + 1).astype(dtype)
    labels[1, 2, 3] = np.iinfo(dtype).max
    np.savez(tmp_path / "v.npz", raw=raw, labels=labels, small=labels.astype(np.uint16) | 0xFFF0)
    with pytest.raises(UserError, match=rf"v.npz#labels: object id {np.iinfo(dtype).max} \(the largest "
                                        rf"{np.dtype(dtype).name}: -1 written unsigned.*\(1, 2, 3\).*map it to 0"):
        load_pair(f"{tmp_path}/v.npz#raw", f"{tmp_path}/v.npz#labels")
    assert load_pair(f"{tmp_path}/v.npz#raw", f"{tmp_path}/v.npz#small").labels.max() > 0


def test_a_section_range_beyond_the_volume_is_refused_not_clipped(tmp_path):
    """(lab walk-through) `--val-raw vol[75:125]` of a 100-section volume trained and validated on sections 75-99
    without a word, though every other command refuses a bound beyond the volume (README, Volume addresses)."""
    raw, labels = voronoi_volume((10, 16, 16), 5, seed=0)
    np.savez(tmp_path / "v.npz", raw=raw, labels=labels)
    a = f"{tmp_path}/v.npz"
    with pytest.raises(UserError, match=r"v.npz#raw\[5:20\]: section 20 lies beyond the volume's 10 sections"):
        load_pair(f"{a}#raw[5:20]", f"{a}#labels[5:20]")
    assert load_pair(f"{a}#raw[-3:]", f"{a}#labels[-3:]").raw.shape[0] == 3  # Python's bounds within it still hold


def test_the_same_volume_spelt_another_way_still_overlaps_the_validation(tmp_path):
    """(lab walk-through) The overlap check compared address strings: `./x`, `/abs/x` or `x/` of the same file
    trained on the validation sections."""
    from connectome.training.data import overlapping_sections

    raw, labels = voronoi_volume((16, 24, 24), 10, seed=0)
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "t.npz", raw=raw, labels=labels)
    train = [f"{tmp_path}/t.npz#raw[0:10]"]
    for spelt in (f"{tmp_path}/./t.npz#raw[8:16]", f"{tmp_path}/sub/../t.npz#raw[8:16]"):
        assert overlapping_sections(train, [spelt]), spelt
    assert not overlapping_sections(train, [f"{tmp_path}/t.npz#raw[10:16]"])
    assert not overlapping_sections(train, [f"{tmp_path}/t.npz#labels[0:10]"])  # another key: another volume


def test_all_zero_labels_are_named_as_such(tmp_path):
    raw, _ = voronoi_volume((6, 16, 16), 5, seed=0)
    np.savez(tmp_path / "v.npz", raw=raw, labels=np.zeros(raw.shape, np.uint32))
    with pytest.raises(UserError, match=r"v.npz#labels: every voxel is 0 \(boundary or unlabelled\)"):
        load_pair(f"{tmp_path}/v.npz#raw", f"{tmp_path}/v.npz#labels")


def test_bad_evaluation_data_is_refused_before_training(tmp_path):
    """(lab walk-through) --eval-raw / --eval-labels were read only after the last iteration: a uint16 or missing
    evaluation volume was refused once the whole run was spent, leaving a checkpoint without its log."""
    from connectome.affinity.training import TrainSettings, train

    raw, labels = voronoi_volume((12, 16, 16), 5, seed=0)
    np.savez(tmp_path / "t.npz", raw=raw, labels=labels, raw16=raw.astype(np.uint16), labels2=labels)
    a = f"{tmp_path}/t.npz"
    settings = TrainSettings(raw=[f"{a}#raw"], labels=[f"{a}#labels"], eval_raw=[f"{a}#raw16"],
                             eval_labels=[f"{a}#labels2"], name="x", out=str(tmp_path / "o"), iterations=1,
                             patch=(12, 16, 16), voxel_size=(8, 8, 8), threads=1)
    with pytest.raises(UserError, match="raw16: expected uint8 raw, found uint16; `connectome ingest SRC DST "
                                        "--voxel-size Z Y X --dtype uint8` converts it"):
        train(settings, log=lambda *a: None)
    assert not (tmp_path / "o" / "x.pt").exists()


def test_an_init_model_of_another_arch_is_named_in_the_refusal(tmp_path):
    """(lab walk-through) `--init sstem` without `--arch aniso` said only "(aux outputs, norm)"."""
    import dataclasses

    import torch

    from connectome.affinity.training import AUX_OFFSETS, TrainSettings, train
    from connectome.models import UNet, preset, save_model
    from connectome.models.unet import NEAREST_OFFSETS

    torch.manual_seed(0)
    net = UNet(dataclasses.replace(preset("aniso", NEAREST_OFFSETS + AUX_OFFSETS["aniso"]), norm="batch"))
    init = save_model(tmp_path / "serial", net, {"voxel_size": [40, 4, 4], "normalisation": {"mean": 0.5, "std": 0.2}})
    raw, labels = voronoi_volume((12, 16, 16), 5, seed=0)
    np.savez(tmp_path / "t.npz", raw=raw, labels=labels)
    a = f"{tmp_path}/t.npz"
    common = dict(raw=[f"{a}#raw"], labels=[f"{a}#labels"], name="x", out=str(tmp_path / "o"), iterations=1,
                  patch=(12, 16, 16), voxel_size=(8, 8, 8), threads=1, init=str(init))
    with pytest.raises(UserError, match=r"differs from --arch iso with these options \(it is --arch aniso\)$"):
        train(TrainSettings(**common), log=lambda *a: None)
    with pytest.raises(UserError, match=r"\(it has the long-range outputs: leave out --no-aux; it was trained with "
                                        r"--norm batch\)$"):
        train(TrainSettings(**{**common, "patch": (4, 24, 24)}, arch="aniso", aux=False, norm="none"),
              log=lambda *a: None)
