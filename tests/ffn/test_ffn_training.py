"""FFN training: the loss falls on a small synthetic set; `connectome train ffn` writes weights with provenance."""

import json

import numpy as np
import pytest
import torch

from connectome.cli.main import main
from connectome.ffn.examples import ExampleSource, candidate_centres, fov_fractions
from connectome.ffn.model import FFN, FFNConfig, FFNInfo
from connectome.ffn.registry import load_model, read_info
from connectome.ffn.training import train_step

SMALL = FFNConfig(fov=(9, 9, 9), deltas=(2, 2, 2), depth=2, features=8)


def test_examples_are_centred_on_object_voxels_away_from_boundaries():
    labels = np.zeros((20, 20, 20), np.uint32)
    labels[:, :, :10], labels[:, :, 10:] = 1, 2
    flat = candidate_centres(labels, (9, 9, 9), (8, 8, 8), min_distance=2)
    z, y, x = np.unravel_index(flat, labels.shape)
    assert len(flat) > 0 and np.all((x <= 7) | (x >= 12)) and z.min() >= 4 and z.max() <= 15


def test_fov_fractions_give_the_share_of_the_box_the_voxels_object_fills():
    labels = np.zeros((12, 12, 12), np.uint64)
    labels[:, :, :6], labels[:, :, 6:] = 10**12, 7  # ids far apart: renumbered before find_objects
    labels[6, 6, 1] = 0
    f = fov_fractions(labels, (3, 3, 3))
    assert f[6, 6, 3] == 1.0  # the box holds only its own object
    assert np.isclose(f[6, 6, 5], 2 / 3) and np.isclose(f[6, 6, 6], 2 / 3)  # a face of the box on the other object
    assert np.isclose(f[6, 6, 2], 26 / 27)  # one background voxel in the box
    assert f[6, 6, 1] == 0.0  # background


def test_balanced_examples_draw_boundary_fovs_that_uniform_draws_rarely_see():
    labels = np.ones((40, 40, 40), np.uint32)
    labels[:, 17:23, 17:23] = 2  # a thin process through one large object
    patch, fov = (11, 11, 11), (11, 11, 11)

    def low_share(balance):
        source = ExampleSource([(np.zeros_like(labels, np.uint8), labels)], patch, (8, 8, 8), seed=0,
                               balance_fov=fov if balance else None)
        masks = np.concatenate([source.batch(50)[1] for _ in range(8)])
        return np.mean(masks.mean(axis=(1, 2, 3)) < 0.5)  # FOVs that their object fills less than half

    uniform, balanced = low_share(False), low_share(True)
    assert uniform < 0.05 and balanced > 0.25, (uniform, balanced)  # about 0 and a third


def test_loss_falls_on_a_small_synthetic_set():
    from connectome.synth import generate

    torch.manual_seed(0)
    torch.set_num_threads(1)
    v = generate((32, 96, 96), (8.0, 8.0, 8.0), seed=3)
    assert len(np.unique(v.labels)) > 5  # several touching objects, not one
    patch = tuple(f + 2 * d for f, d in zip(SMALL.fov, SMALL.deltas))
    source = ExampleSource([(v.raw, v.labels.astype(np.uint32))], patch, (8, 8, 8), seed=0)
    info = FFNInfo("t", SMALL, (8.0, 8.0, 8.0), float(v.raw.mean() / 255), float(v.raw.std() / 255))
    net = FFN(SMALL)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    losses = []
    for _ in range(120):
        raw, mask = source.batch(4)
        loss = train_step(net, raw, mask, info, moves=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-30:]) < 0.8 * np.mean(losses[:10]), (losses[:10], losses[-30:])


@pytest.mark.slow
def test_train_command_writes_weights_provenance_and_curves(tmp_path, capsys):
    from connectome.synth import generate

    generate((32, 96, 96), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "t"), chunk_shape=(32, 96, 96))
    raw, labels = str(tmp_path / "t" / "raw"), str(tmp_path / "t" / "labels")
    argv = ["train", "ffn", "--raw", raw + "[0:20]", "--labels", labels + "[0:20]",
            "--val-raw", raw + "[20:32]", "--val-labels", labels + "[20:32]",
            "--name", "ffn-tiny", "--out", str(tmp_path / "out"), "--iterations", "12", "--val-every", "6",
            "--batch-size", "2", "--fov", "9", "9", "9", "--deltas", "4", "4", "4", "--depth", "2",
            "--features", "8", "--val-orders", "1", "--json"]  # one seed order: test_..._coarser_scale checks both
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["iterations"] == 12 and summary["validation"]["voi"] >= 0
    meta = json.loads((tmp_path / "out" / "ffn-tiny.json").read_text())
    assert meta["kind"] == "ffn" and meta["fov"] == [9, 9, 9] and meta["voxel_size"] == [8.0, 8.0, 8.0]
    assert meta["input"] == "raw"
    assert len(meta["provenance"]["validation_history"]) == 2
    assert meta["provenance"]["settings"]["balance"] is True  # balanced examples unless --no-balance
    assert (tmp_path / "out" / "ffn-tiny-loss.png").stat().st_size > 1000
    net, info = load_model(str(tmp_path / "out" / "ffn-tiny.pt"))
    assert info.config == read_info(tmp_path / "out" / "ffn-tiny.pt").config and net.config.depth == 2
    # the validation scores the network's segmentation against the labels: a 12-iteration net is far from VOI 0
    # (re-segmenting the crop with the kept weights to compare would cost this test ~40 s more)
    best, history = meta["provenance"]["validation"], meta["provenance"]["validation_history"]
    assert best["voi"] > 0.5, best
    assert best["voi"] == min(h["voi"] for h in history) == summary["validation"]["voi"]
    assert meta["provenance"]["kept_iteration"] == best["iteration"]

    # --init continues from the result: its network and normalisation, its weights validated first (iteration 0)
    # and kept unless a checkpoint beats them; options that set the network are refused. (A 3-section validation
    # crop keeps the canvases short.)
    again = argv[:argv.index("--fov")]
    for option, value in (("--name", "ffn-more"), ("--iterations", "1"), ("--val-raw", raw + "[20:23]"),
                          ("--val-labels", labels + "[20:23]")):
        again[again.index(option) + 1] = value
    assert main([*again, "--init", str(tmp_path / "out" / "ffn-tiny.pt"), "--lr", "5", "--json"]) == 0
    more = json.loads((tmp_path / "out" / "ffn-more.json").read_text())
    assert more["architecture"] == meta["architecture"] and more["normalisation"] == meta["normalisation"]
    history = more["provenance"]["validation_history"]
    assert [h["iteration"] for h in history] == [0, 1]
    # one step at lr 5 does not help it: nothing beats the start, whose weights are the result, unchanged (were the
    # --init weights not loaded, the kept iteration-0 weights would be fresh ones)
    assert history[1]["voi"] >= history[0]["voi"] and more["provenance"]["kept_iteration"] == 0  # ties keep it too
    start, kept = (torch.load(tmp_path / "out" / f"{n}.pt", weights_only=True) for n in ("ffn-tiny", "ffn-more"))
    assert all(torch.equal(start[k], kept[k]) for k in start)
    capsys.readouterr()
    assert main([*again, "--init", str(tmp_path / "out" / "ffn-tiny.pt"), "--depth", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--init" in err and "leave out --depth" in err, err


def test_train_command_on_affinities_records_its_input_and_normalises_the_mean_affinity(tmp_path, capsys):
    """(No validation volume here: an untrained network on a boundary map moves its FOV for minutes.)"""
    from connectome.ffn.inputs import affinity_image
    from connectome.synth import generate

    v = generate((20, 64, 64), (8.0, 8.0, 8.0), seed=3)
    v.save(str(tmp_path / "t"), chunk_shape=(20, 64, 64))
    argv = ["train", "ffn", "--raw", str(tmp_path / "t" / "raw"), "--labels", str(tmp_path / "t" / "labels"),
            "--name", "ffn-aff", "--out", str(tmp_path / "out"), "--iterations", "3", "--batch-size", "2",
            "--fov", "9", "9", "9", "--deltas", "4", "4", "4", "--depth", "2", "--features", "8",
            "--input", "affinities:synthetic", "--json"]
    assert main(argv) == 0
    capsys.readouterr()
    meta = json.loads((tmp_path / "out" / "ffn-aff.json").read_text())
    assert meta["input"] == "affinities:synthetic"
    mean_aff = affinity_image(v.raw, "synthetic")
    assert mean_aff.mean() / 255 > v.raw.mean() / 255 + 0.1  # a different image: mostly high affinity inside cells
    assert abs(meta["normalisation"]["mean"] - mean_aff.mean() / 255) < 1e-4
    _, info = load_model(str(tmp_path / "out" / "ffn-aff.pt"))
    assert info.input == "affinities:synthetic"


def test_train_command_refuses_a_bad_affinity_input_in_one_line(tmp_path, capsys):
    from connectome.synth import generate

    generate((16, 32, 32), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "t"), chunk_shape=(16, 32, 32))
    base = ["train", "ffn", "--raw", str(tmp_path / "t" / "raw"), "--labels", str(tmp_path / "t" / "labels"),
            "--name", "ffn-x", "--out", str(tmp_path / "out"), "--iterations", "1"]
    cases = [("boundaries", "expected 'raw' or 'affinities:MODEL'"), ("affinities:nonesuch", "nonesuch"),
             ("affinities:fib-10nm", "fib-10nm was trained on [10.0, 10.0, 10.0] nm voxels")]
    for spec, expected in cases:
        assert main([*base, "--input", spec]) == 2, spec
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (spec, err)
    assert not (tmp_path / "out").exists()


def test_train_command_at_a_coarser_scale_records_that_voxel_size(tmp_path, capsys, monkeypatch):
    """`--scale 1 2 2` trains on the image averaged in 1 x 2 x 2 boxes: the model's voxel size is twice the data's
    in y and x, so `segment --method ffn` runs it downsampled (tests/ffn/test_scale.py); validation segments the
    downsampled image and scores it, upsampled, against the labels at the data's voxel size, with the seeds in
    forward and in reverse order (the default `--val-orders 2`), the scores being the two runs' means."""
    from connectome.ffn import training
    from connectome.synth import generate

    generate((32, 64, 64), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "t"), chunk_shape=(32, 64, 64))
    raw, labels = str(tmp_path / "t" / "raw"), str(tmp_path / "t" / "labels")
    segmented, scored = [], []
    segment_volume, validation_scores = training.segment_volume, training.validation_scores
    monkeypatch.setattr(training, "segment_volume", lambda net, info, image, settings, **kw: segmented.append(
        (image.shape, settings.reverse)) or segment_volume(net, info, image, settings, **kw))
    monkeypatch.setattr(training, "validation_scores", lambda seg, gt: scored.append(
        (seg.shape, gt.shape, validation_scores(seg, gt))) or scored[-1][2])
    argv = ["train", "ffn", "--raw", raw + "[0:24]", "--labels", labels + "[0:24]", "--val-raw", raw + "[24:32]",
            "--val-labels", labels + "[24:32]", "--name", "ffn-coarse", "--out", str(tmp_path / "out"),
            "--iterations", "3", "--val-every", "3", "--batch-size", "2", "--fov", "9", "9", "9", "--deltas", "4",
            "4", "4", "--depth", "2", "--features", "8", "--scale", "1", "2", "2", "--json"]
    assert main(argv) == 0
    capsys.readouterr()
    assert segmented == [((8, 32, 32), False), ((8, 32, 32), True)]
    assert [s[:2] for s in scored] == [((8, 64, 64), (8, 64, 64))] * 2
    meta = json.loads((tmp_path / "out" / "ffn-coarse.json").read_text())
    (entry,) = meta["provenance"]["validation_history"]
    runs = [s[2] for s in scored]
    assert entry["voi_orders"] == [r["voi"] for r in runs]
    for key in ("voi", "voi_split", "voi_merge", "merges"):
        assert entry[key] == pytest.approx((runs[0][key] + runs[1][key]) / 2), key
    assert meta["voxel_size"] == [8.0, 16.0, 16.0]
    assert meta["provenance"]["settings"]["scale"] == [1, 2, 2]
    assert main([*argv[:-4], "0", "2", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale 0 2 2" in err[0], err


def test_train_command_refuses_volumes_too_small_for_a_patch_in_one_line(tmp_path, capsys):
    from connectome.synth import generate

    generate((24, 64, 64), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "t"), chunk_shape=(24, 64, 64))
    raw, labels = str(tmp_path / "t" / "raw"), str(tmp_path / "t" / "labels")
    argv = ["train", "ffn", "--raw", raw, "--labels", labels, "--name", "ffn-x", "--out", str(tmp_path / "out"),
            "--iterations", "1", "--scale", "2", "2", "2"]  # 12 x 32 x 32 after --scale, the patch is 27 x 27 x 27
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "12x32x32" in err[0] and "27x27x27" in err[0], err
    assert not (tmp_path / "out" / "ffn-x.pt").exists()


def test_train_command_refuses_training_data_that_overlaps_the_validation_data(tmp_path, capsys):
    """As `train affinities` and `train edges` do (the FFN accepted it and trained on its validation sections)."""
    path = tmp_path / "v.npz"
    rng = np.random.default_rng(0)
    np.savez(path, raw=rng.integers(0, 255, (40, 64, 64), dtype=np.uint8),
             labels=rng.integers(1, 4, (40, 64, 64)).astype(np.uint32))
    argv = ["train", "ffn", "--raw", f"{path}#raw[0:32]", "--labels", f"{path}#labels[0:32]", "--val-raw",
            f"{path}#raw[30:40]", "--val-labels", f"{path}#labels[30:40]", "--voxel-size", "8", "8", "8",
            "--name", "ffn-x", "--out", str(tmp_path / "out"), "--iterations", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training data overlaps held-out data" in err[0] and "raw[0:32]" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["ffn", "affinities"])
def test_train_commands_refuse_an_unusable_device_in_one_line(tmp_path, capsys, command):
    from connectome.synth import generate

    generate((16, 32, 32), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "t"), chunk_shape=(16, 32, 32))
    base = ["train", command, "--raw", str(tmp_path / "t" / "raw"), "--labels", str(tmp_path / "t" / "labels"),
            "--name", "ffn-x", "--out", str(tmp_path / "out"), "--iterations", "1"]
    cases = [("tpu", "--device tpu: expected cpu, cuda or cuda:N"), ("gpu:0", "--device gpu:0: expected cpu")]
    if not torch.cuda.is_available():
        cases.append(("cuda", "--device cuda: no CUDA device is available here"))
    for device, expected in cases:
        assert main([*base, "--device", device]) == 2, device
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (device, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["ffn", "affinities"])
def test_train_commands_refuse_half_a_validation_pair_a_file_as_out_and_a_bad_ffn_name(tmp_path, capsys, command):
    """--val-raw without --val-labels trained without validation and said nothing; --out naming a file gave a
    traceback; an FFN named without 'ffn-' could not be found by `segment --method ffn` once installed."""
    from connectome.synth import generate

    generate((16, 32, 32), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "t"), chunk_shape=(16, 32, 32))
    raw, labels = str(tmp_path / "t" / "raw"), str(tmp_path / "t" / "labels")
    (tmp_path / "afile").write_text("x")
    base = ["train", command, "--raw", raw, "--labels", labels, "--iterations", "1"]
    cases = [
        (["--name", "ffn-x", "--out", str(tmp_path / "out"), "--val-raw", raw],
         "--val-raw given without --val-labels: expected both"),
        (["--name", "ffn-x", "--out", str(tmp_path / "out"), "--val-labels", labels],
         "--val-labels given without --val-raw: expected both"),
        (["--name", "ffn-x", "--out", str(tmp_path / "afile")], "afile is a file; expected a folder"),
    ]
    if command == "ffn":
        cases.append((["--name", "tiny", "--out", str(tmp_path / "out")], "--name tiny: expected a name starting"))
    # a name with a path in it wrote the model outside --out (and `--install` outside the weights folder); no
    # iterations wrote an untrained model, then failed with a traceback
    cases += [(["--name", "../ffn-escaped", "--out", str(tmp_path / "out")],
               "--name '../ffn-escaped': expected a file name"),
              (["--name", "ffn-x", "--out", str(tmp_path / "out"), "--iterations", "0"],
               "argument --iterations: expected a whole number > 0, found '0'")]
    for extra, expected in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], (extra, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ffn-escaped.pt").exists()


@pytest.mark.parametrize("command", ["ffn", "affinities"])
def test_train_commands_refuse_a_voxel_size_the_training_volumes_contradict(tmp_path, capsys, command):
    """A model recorded 20 nm trained on 8 nm data, or 8 nm trained on 8 and 4 nm data, without a word (beyond the
    1.5x per axis a model runs on: refused); within it (10 nm given for 8 nm data) one warning line."""
    from connectome.synth import generate
    from connectome.training.data import training_voxel_size

    generate((16, 96, 96), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "a"), chunk_shape=(16, 96, 96))
    generate((16, 96, 96), (4.0, 4.0, 4.0), seed=3).save(str(tmp_path / "b"), chunk_shape=(16, 96, 96))
    a = ["--raw", str(tmp_path / "a" / "raw"), "--labels", str(tmp_path / "a" / "labels")]
    b = ["--raw", str(tmp_path / "b" / "raw"), "--labels", str(tmp_path / "b" / "labels")]
    base = ["train", command, "--name", "ffn-x", "--out", str(tmp_path / "out"), "--iterations", "1"]
    for extra, expected in (([*a, "--voxel-size", "20", "20", "20"], "has voxel size [8.0, 8.0, 8.0] nm, but "
                                                                     "--voxel-size is [20.0, 20.0, 20.0]"),
                            ([*a, *b], "has voxel size [4.0, 4.0, 4.0] nm, but")):
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "within 1.5x" in err[0], (extra, err)
    assert not (tmp_path / "out").exists()
    assert training_voxel_size((10, 10, 10), [str(tmp_path / "a" / "raw")]) == (10.0, 10.0, 10.0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and "the model records --voxel-size [10.0, 10.0, 10.0]" in err[0]
