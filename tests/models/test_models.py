"""The affinity U-Net: shipped weights load by name, predictions are sane, tiling is seam-free."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from connectome.core.errors import UserError
from connectome.models import (
    NEAREST_OFFSETS,
    UNet,
    available_models,
    load_model,
    predict_affinities,
    predict_volume,
    preset,
    save_model,
)
from connectome.models.unet import aligned_reach

SHIPPED = ("fib-10nm", "sstem", "sstem-2d", "synthetic")


def _random_model(tmp_path, arch: str, z_affinity: str = "learned", seed: int = 0, norm: str = "none"):
    """A model with random weights (and random biases and BatchNorm statistics, so every path
    matters) saved and loaded back (BatchNorm folded into the convolutions by load_model)."""
    torch.manual_seed(seed)
    net = UNet(dataclasses.replace(preset(arch, NEAREST_OFFSETS + ((0, 0, -3),)), norm=norm))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d):
                m.bias.normal_(0, 0.1)
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.1)
    path = save_model(tmp_path / f"{arch}-{z_affinity}", net,
                      {"voxel_size": [8, 8, 8], "normalisation": {"mean": 0.5, "std": 0.2},
                       "z_affinity": z_affinity})
    return load_model(str(path), device="cpu")


def test_all_shipped_models_are_present():
    assert set(SHIPPED) <= set(available_models())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_predicts(name):
    if name not in available_models():
        pytest.skip(f"{name} weights not shipped yet")
    model = load_model(name, device="cpu")
    info = model.info
    assert info.name == name
    assert not model.net.training
    assert info.offsets[:3] == NEAREST_OFFSETS
    assert all(c % d == 0 for c, d in zip(info.context, info.divisor))
    assert all(c >= r for c, r in zip(info.context, aligned_reach(info.config)))
    assert len(info.voxel_size) == 3 and min(info.voxel_size) > 0
    prov = info.provenance
    for key in ("command", "wall_time_s", "device", "data", "iterations", "validation"):
        assert key in prov, key
    assert prov["command"].startswith("connectome train affinities")
    shape = tuple(2 * d for d in info.divisor)
    shape = tuple(max(s, 8) for s in shape)
    raw = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    affs = predict_affinities(model, raw)
    assert affs.shape == (3, *shape) and affs.dtype == np.float32
    assert affs.min() >= 0.0 and affs.max() <= 1.0


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weight_files_are_small(name):
    from connectome.models import WEIGHTS_DIR

    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.exists():
        pytest.skip(f"{name} weights not shipped yet")
    assert path.stat().st_size < 2_000_000
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["agglomeration"]["threshold"] is not None


def test_unknown_model_is_a_user_error_naming_the_available_ones():
    with pytest.raises(UserError) as e:
        load_model("no-such-model")
    msg = str(e.value)
    assert "\n" not in msg and "no-such-model" in msg
    for name in available_models():
        assert name in msg


def test_missing_weight_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        load_model(str(tmp_path / "absent.pt"))


def test_a_model_json_given_in_place_of_its_weights_names_the_weights(tmp_path, monkeypatch):
    """(lab walk-through) `--model DIR/lab.json` (the file a lab opens to read the threshold) was refused with
    torch's many-line text about `weights_only`; `--model DIR/lab` said only "no such file"."""
    model = _random_model(tmp_path, "iso")
    weights = model.info.path
    json_path = weights.removesuffix(".pt") + ".json"
    with pytest.raises(UserError, match=rf"^model {json_path}: expected the weights file \(.pt\) with its .json "
                                        rf"beside it, found the .json: give {weights}$"):
        load_model(json_path, device="cpu")
    with pytest.raises(UserError, match=rf"no such file \(did you mean {weights}\?\)$"):
        load_model(weights.removesuffix(".pt"), device="cpu")
    assert load_model(weights, device="cpu").info.path == weights
    # the same, given bare in the folder that holds them (`--model lab.json`, `--model lab`)
    monkeypatch.chdir(os.path.dirname(weights))
    bare = os.path.basename(weights)
    with pytest.raises(UserError, match=rf"^model {bare.removesuffix('.pt')}.json: expected the weights file"):
        load_model(bare.removesuffix(".pt") + ".json", device="cpu")
    with pytest.raises(UserError, match=rf"unknown model .*did you mean ./{bare}\?$"):
        load_model(bare.removesuffix(".pt"), device="cpu")


def test_a_weights_json_that_is_not_an_affinity_models_is_refused_in_one_line(tmp_path, capsys):
    from connectome.cli.main import main
    from connectome.synapses.model import available as cleft_models

    (tmp_path / "w.pt").write_bytes(b"")
    raw = tmp_path / "raw.npz"
    np.savez(raw, raw=np.zeros((4, 32, 32), np.uint8))
    for text, expected in (('{"name": "w", "voxel_size": [8, 8, 8]}', "found one without 'architecture', "
                                                                      "'normalisation'"),
                           ("{not json", "found a file that is not JSON"), ("[1, 2]", "(an object), found a list")):
        (tmp_path / "w.json").write_text(text)
        code = main(["segment", f"{raw}#raw", str(tmp_path / "out"), "--model", str(tmp_path / "w.pt"),
                     "--voxel-size", "8", "8", "8", "--scoring", "mean"])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
        assert "w.json: expected the JSON of an affinity model" in err and not (tmp_path / "out").exists()
    # the partner networks beside the cleft models are not offered as cleft models, and are refused as one
    assert "partner-net-synthetic" not in cleft_models() and "cleft-synthetic" in cleft_models()
    code = main(["synapses", f"{raw}#raw", str(tmp_path / "syn"), "--segmentation", f"{raw}#raw",
                 "--model", "partner-net-synthetic", "--voxel-size", "8", "8", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "expected the JSON of a cleft model, found one without 'architecture'" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "syn").exists()


def test_bad_inputs_raise_value_error(tmp_path):
    model = _random_model(tmp_path, "iso")
    with pytest.raises(ValueError, match="multiple"):
        predict_affinities(model, np.zeros((8, 8, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        predict_affinities(model, np.zeros((8, 8, 8), np.float32))


def _blobs(shape) -> np.ndarray:
    """Noise smoothed in plane and stretched over 0-255: dark and light regions with edges between them. Uniform
    noise holds no membranes, and a trained network may answer it with affinities saturated at 1, where a missing
    margin changes them by less than the 1e-5 this test resolves (the `sstem` fine-tuned in session 39 does)."""
    noise = np.random.default_rng(1).normal(size=shape)
    smooth = ndimage.gaussian_filter(noise, (0, 2, 2))
    return np.clip((smooth - smooth.mean()) / smooth.std() * 64 + 128, 0, 255).astype(np.uint8)


def _assert_seam_free(model, flips: int = 1) -> None:
    """Two overlapping tiles with `context` margin give exactly the centre of the whole prediction,
    and one divisor step less margin does not (with `flips`: test-time augmentation)."""
    c, d = model.info.context, model.info.divisor
    core = tuple(2 * dd * (3 if dd > 1 else 2) for dd in d)
    shape = (core[0] + 2 * c[0], core[1] + 2 * c[1], 2 * core[2] + 2 * c[2])
    raw = _blobs(shape)
    whole = predict_affinities(model, raw, flips)
    cut = c[2] + core[2]  # divisor-aligned boundary between the two write boxes
    tiles = [(c[2], cut), (cut, cut + core[2])]
    centre = (slice(None), slice(c[0], c[0] + core[0]), slice(c[1], c[1] + core[1]))
    for x0, x1 in tiles:
        assert x0 % d[2] == 0
        tile = predict_affinities(model, raw[:, :, x0 - c[2]: x1 + c[2]], flips)
        got = tile[centre + (slice(c[2], c[2] + x1 - x0),)]
        want = whole[centre + (slice(x0, x1),)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # the margin is needed: one divisor step less on both sides changes the tile's edges
    x0, x1 = tiles[0]
    short = predict_affinities(model, raw[:, :, x0 - c[2] + d[2]: x1 + c[2] - d[2]], flips)
    inner = c[2] - d[2]
    got = short[centre + (np.r_[inner: inner + d[2], inner + x1 - x0 - d[2]: inner + x1 - x0],)]
    want = whole[centre + (np.r_[x0: x0 + d[2], x1 - d[2]: x1],)]
    assert not np.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("arch,z_affinity,norm", [("iso", "learned", "batch"), ("aniso", "from_xy", "none")])
def test_tiled_prediction_is_seam_free(tmp_path, arch, z_affinity, norm):
    model = _random_model(tmp_path, arch, z_affinity, norm=norm)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in model.net.modules())
    _assert_seam_free(model)


@pytest.mark.parametrize("arch,z_affinity", [("iso", "learned"), ("aniso", "from_xy")])
def test_flip_averaged_prediction_is_seam_free(tmp_path, arch, z_affinity):
    _assert_seam_free(_random_model(tmp_path, arch, z_affinity), flips=8)


def test_flip_averaging_puts_each_prediction_on_its_own_edge(tmp_path):
    """flips=2 is the mean of the plain prediction and the x-flipped one mapped back: flipped, the x
    channel at x' is the edge (x', x' - 1), which is the edge (x, x + 1) of the unflipped volume."""
    model = _random_model(tmp_path, "iso")
    raw = np.random.default_rng(4).integers(0, 256, (8, 16, 16), dtype=np.uint8)
    plain = predict_affinities(model, raw)
    flipped = predict_affinities(model, np.ascontiguousarray(raw[:, :, ::-1]))
    n = raw.shape[2]
    want = plain.copy()
    for x in range(n):
        want[:2, :, :, x] = (plain[:2, :, :, x] + flipped[:2, :, :, n - 1 - x]) / 2  # voxel-centred channels
        if x > 0:  # edge (x, x - 1) is the flipped volume's edge (n - x, n - x - 1), stored at n - x
            want[2, :, :, x] = (plain[2, :, :, x] + flipped[2, :, :, n - x]) / 2
    np.testing.assert_allclose(predict_affinities(model, raw, 2), want, atol=1e-6)
    with pytest.raises(ValueError, match="flips"):
        predict_affinities(model, raw, 9)


def test_flipped_predictions_of_a_trained_model_agree_on_real_data():
    """With the shipped fib-10nm on a real crop, each flipped prediction mapped back (flipped, then the flipped
    axis's channel moved one voxel up) matches the plain one better than with a move of 0 or 2 voxels."""
    from connectome.models.inference import FLIPS, _unflip

    from conftest import data_file

    raw = np.ascontiguousarray(np.load(data_file("flyem_medulla_fib_train/medulla_train.npz"))["raw"][
        100:116, :64, :64])
    model = load_model("fib-10nm", device="cpu")
    plain = predict_affinities(model, raw)[None]
    inner = tuple(slice(4, -4) for _ in range(3))
    for axes in FLIPS[1:4]:
        flipped = predict_affinities(model, np.ascontiguousarray(np.flip(raw, axis=list(axes))))[None]
        a = axes[0]
        np.testing.assert_array_equal(_unflip(flipped, axes, plain)[0, a][inner],
                                      np.roll(np.flip(flipped, axis=[b + 2 for b in axes])[0, a], 1, axis=a)[inner])
        error = {move: np.abs(np.roll(np.flip(flipped, axis=[b + 2 for b in axes])[0, a], move, axis=a)[inner]
                              - plain[0, a][inner]).mean() for move in (0, 1, 2)}
        assert error[1] < min(error[0], error[2]), (axes, error)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_models_are_seam_free(name):
    if name not in available_models():
        pytest.skip(f"{name} weights not shipped yet")
    _assert_seam_free(load_model(name, device="cpu"))


@pytest.mark.parametrize("arch", ["iso", "aniso"])
def test_receptive_field_radius_is_exact(arch):
    """The impulse response of an all-positive network reaches exactly `radius` voxels."""
    cfg = preset(arch)
    net = UNet(cfg)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv3d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                m.bias.zero_()
    d = cfg.divisor
    shape = tuple(2 * c + 2 * dd for c, dd in zip(cfg.context, d))
    reach = [0, 0, 0]
    phases = max(d)  # the reach depends on where the impulse sits in the downsampling grid
    x = torch.zeros(phases, 1, *shape)
    centres = [tuple(s // 2 + p % dd for s, dd in zip(shape, d)) for p in range(phases)]
    for p, centre in enumerate(centres):
        x[(p, 0, *centre)] = 1.0
    with torch.no_grad():
        y = net(x)[:, 0]
    for p, centre in enumerate(centres):
        nz = torch.nonzero(y[p] > 0)
        for a in range(3):
            reach[a] = max(reach[a], int((nz[:, a] - centre[a]).abs().max()))
    assert tuple(reach) == cfg.radius
    # divisor-aligned tiles need no more than the radius (the seam test shows they need all of context)
    threads = torch.get_num_threads()
    aligned_reach.cache_clear()
    aligned = aligned_reach(cfg)  # measured on one thread, the caller's threads restored
    assert torch.get_num_threads() == threads
    assert all(a <= r for a, r in zip(aligned, cfg.radius))
    assert all(c >= a and c - a < dd and c % dd == 0 for c, a, dd in zip(cfg.context, aligned, d))


def test_batchnorm_is_folded_exactly(tmp_path):
    """load_model's folded network computes what the trained network computes in eval mode."""
    model = _random_model(tmp_path, "iso", norm="batch")
    net = UNet(model.info.config)
    net.load_state_dict(torch.load(model.info.path, weights_only=True))
    net.eval()
    raw = np.random.default_rng(5).integers(0, 256, (8, 16, 16), dtype=np.uint8)
    x = (torch.from_numpy(raw)[None, None].float() / 255 - model.info.mean) / model.info.std
    with torch.no_grad():
        want = torch.sigmoid(net(x)[0, :3]).numpy()
    np.testing.assert_allclose(predict_affinities(model, raw), want, atol=1e-5)


def test_batched_prediction_matches_single(tmp_path):
    model = _random_model(tmp_path, "iso")
    rng = np.random.default_rng(2)
    raws = rng.integers(0, 256, (2, 8, 16, 16), dtype=np.uint8)
    batch = predict_affinities(model, raws)
    listed = predict_affinities(model, list(raws))
    assert batch.shape == (2, 3, 8, 16, 16) and isinstance(listed, list)
    for i in range(2):
        single = predict_affinities(model, raws[i])
        np.testing.assert_allclose(batch[i], single, atol=1e-6)
        np.testing.assert_allclose(listed[i], single, atol=1e-6)


def test_predict_volume_takes_any_shape_and_tiles_without_seams(tmp_path):
    model = _random_model(tmp_path, "iso")
    raw = np.random.default_rng(3).integers(0, 256, (9, 14, 27), dtype=np.uint8)
    whole = predict_volume(model, raw)
    assert whole.shape == (3, 9, 14, 27)
    tiled = predict_volume(model, raw, tile=(8, 16, 16))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_z_affinity_from_xy_for_two_d_models(tmp_path):
    model = _random_model(tmp_path, "aniso", "from_xy")
    raw = np.random.default_rng(4).integers(0, 256, (4, 16, 16), dtype=np.uint8)
    affs = predict_affinities(model, raw)
    xy = affs[1:]
    # z affinity never exceeds the in-plane "interior" evidence of either section
    interior = (xy[0] + np.concatenate([xy[0][:, 1:], xy[0][:, -1:]], 1)
                + xy[1] + np.concatenate([xy[1][:, :, 1:], xy[1][:, :, -1:]], 2)) / 4
    np.testing.assert_allclose(affs[0][1:], np.minimum(interior[1:], interior[:-1]), atol=1e-6)


def test_flops_per_voxel_is_in_the_cpu_budget():
    for arch in ("iso", "aniso"):
        flops = preset(arch).flops_per_voxel
        assert 5e3 < flops < 3e4, (arch, flops)


def test_other_kinds_of_weights_are_not_affinity_models():
    """The weights folder also holds FFN and tissue models: not offered as affinity models, refused in one line."""
    names = available_models()
    assert "ffn-synthetic" not in names and "tissue" not in names
    with pytest.raises(UserError, match="'tissue' is of kind 'tissue', not an affinity model"):
        load_model("tissue", device="cpu")


def test_precision_auto_follows_the_hardware():
    from connectome.models.inference import native_bfloat16, resolve_precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", gpu) == "bfloat16"
    assert resolve_precision("auto", cpu) == ("bfloat16" if native_bfloat16() else "float32")
    assert resolve_precision("float32", gpu) == "float32" and resolve_precision("bfloat16", cpu) == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("float16", cpu)


def test_bfloat16_prediction_stays_close_to_float32():
    """On a real crop with the shipped fib-10nm, bfloat16 moves affinities by well under one uint8 level on average."""
    from conftest import data_file

    raw = np.ascontiguousarray(np.load(data_file("flyem_medulla_fib_train/medulla_train.npz"))["raw"][
        100:116, :64, :64])
    model = load_model("fib-10nm", device="cpu")
    full = predict_affinities(model, raw, precision="float32")
    half = predict_affinities(model, raw, precision="bfloat16")
    assert not np.array_equal(full, half)  # it did run in bfloat16
    assert np.abs(full - half).mean() < 1 / 255 and np.abs(full - half).max() < 0.1
