"""`connectome ingest --dtype`: narrowing rescales (percentiles or --range) without wrapping, blockwise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectome.cli.main import main
from connectome.core.errors import UserError
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import plan_run
from connectome.image.rescale import needs_rescale, percentile_mapping, rescale, sample_boxes
from connectome.io import create_volume, open_volume

SHAPE = (10, 70, 90)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """uint16 intensities around 30000, with a few dark and bright outliers far beyond 255."""
    rng = np.random.default_rng(7)
    data = rng.normal(30000, 4000, SHAPE).clip(0, 65535).astype(np.uint16)
    data[0, 0, :5] = [0, 1, 2, 300, 511]
    data[-1, -1, -5:] = [65535, 65534, 60000, 50000, 65280]
    path = tmp_path_factory.mktemp("ingest") / "s.npz"
    np.savez(path, raw=data)
    return f"{path}#raw", data


def _ingest(capsys, client, src, dst, *extra):
    argv = ["ingest", src, dst, "--voxel-size", "30", "6", "6", "--chunk-shape", "5", "32", "32",
            "--cluster", client.scheduler.address, "--no-progress", *extra]
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _monotone(source: np.ndarray, out: np.ndarray) -> bool:
    order = np.argsort(source.ravel(), kind="stable")
    return bool(np.all(np.diff(out.ravel()[order].astype(np.int64)) >= 0))


def test_uint16_to_uint8_by_percentiles(src, tmp_path, capsys, client):
    address, data = src
    code, out, _ = _ingest(capsys, client, address, str(tmp_path / "o.zarr" / "raw"), "--dtype", "uint8", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["blocks"] == 2 * 2 * 2 and summary["dtype"] == "uint8"
    low, high = np.percentile(data[data != 0], [0.1, 99.9])  # the source is small: the sample is all of it
    assert summary["rescale"]["from"] == "percentiles" and summary["rescale"]["zeros_left_out"] == 1
    assert summary["rescale"]["low"] == pytest.approx(low) and summary["rescale"]["high"] == pytest.approx(high)
    vol = open_volume(str(tmp_path / "o.zarr" / "raw"))
    got = vol.read(vol.box)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, rescale(data, low, high, np.uint8))  # one map in all 8 blocks
    assert _monotone(data, got)
    assert np.all(got[data <= low] == 0) and np.all(got[data >= high] == 255)
    assert got[0, 0, 3] == 0 and got[0, 0, 4] == 0  # 300 and 511 would wrap to 44 and 255 in a plain cast
    assert got[-1, -1, -1] == 255  # 65280 would wrap to 0
    code, out, _ = _ingest(capsys, client, address, str(tmp_path / "o.zarr" / "raw"), "--dtype", "uint8")
    assert code == 0 and "already done" in out
    assert "uint16 -> uint8 rescaled linearly" in out and "0.1 and 99.9 percentiles" in out


def test_uint16_to_uint8_by_range(src, tmp_path, capsys, client):
    address, data = src
    dst = str(tmp_path / "r.zarr" / "raw")
    code, out, _ = _ingest(capsys, client, address, dst, "--dtype", "uint8", "--range", "20000", "40000", "--json")
    assert code == 0
    assert json.loads(out)["rescale"] == {"low": 20000.0, "high": 40000.0, "from": "--range"}
    vol = open_volume(dst)
    got = vol.read(vol.box)
    expected = np.rint((data.clip(20000, 40000).astype(np.float64) - 20000) * 255 / 20000).astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert _monotone(data, got)
    assert np.all(got[data <= 20000] == 0) and np.all(got[data >= 40000] == 255)


def test_float_to_uint8_rescales_and_widening_copies(tmp_path, capsys, client):
    data = np.linspace(-1.0, 1.0, 4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32)
    np.savez(tmp_path / "f.npz", raw=data, small=(data * 100 + 100).astype(np.uint8))
    code, out, _ = _ingest(capsys, client, f"{tmp_path}/f.npz#raw", str(tmp_path / "f.zarr" / "raw"),
                           "--dtype", "uint8", "--range", "-1", "1", "--json")
    assert code == 0
    got = open_volume(str(tmp_path / "f.zarr" / "raw")).read(open_volume(str(tmp_path / "f.zarr" / "raw")).box)
    assert got.min() == 0 and got.max() == 255 and _monotone(data, got)
    code, out, _ = _ingest(capsys, client, f"{tmp_path}/f.npz#small", str(tmp_path / "w.zarr" / "raw"),
                           "--dtype", "uint16", "--json")
    assert code == 0 and json.loads(out)["rescale"] is None
    vol = open_volume(str(tmp_path / "w.zarr" / "raw"))
    assert vol.dtype == np.uint16
    np.testing.assert_array_equal(vol.read(vol.box), (data * 100 + 100).astype(np.uint8))


def test_nan_in_a_float_source_is_said(tmp_path, capsys, client):
    """NaN becomes 0 in uint8: the summary says so, with how many the sample held (it said nothing)."""
    data = np.linspace(0.0, 1.0, 4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32)
    data[1, 3:7, 3:7] = np.nan
    np.savez(tmp_path / "f.npz", raw=data)
    code, out, _ = _ingest(capsys, client, f"{tmp_path}/f.npz#raw", str(tmp_path / "f.zarr" / "raw"), "--dtype", "uint8")
    assert code == 0 and "NaN (in 16 of the sampled voxels) becomes 0" in out, out
    got = open_volume(str(tmp_path / "f.zarr" / "raw"))
    assert np.all(got.read(got.box)[1, 3:7, 3:7] == 0)
    code, out, _ = _ingest(capsys, client, f"{tmp_path}/f.npz#raw", str(tmp_path / "g.zarr" / "raw"), "--dtype", "uint8",
                           "--json")
    assert code == 0 and json.loads(out)["rescale"]["nan_sampled"] == 16
    code, out, _ = _ingest(capsys, client, f"{tmp_path}/f.npz#raw", str(tmp_path / "h.zarr" / "raw"), "--dtype", "uint8",
                           "--range", "0", "1")
    assert "NaN (if any) becomes 0" in out, out


@pytest.mark.parametrize("extra, words", [
    (["--dtype", "uint16", "--range", "0", "10"], ["--range", "uint16 -> uint16", "unchanged"]),
    (["--dtype", "uint8", "--range", "10", "10"], ["--range", "LOW < HIGH", "10 10"]),
    (["--dtype", "uint9"], ["--dtype", "'uint9'"]),
])
def test_bad_options_are_one_line_exit_2(src, tmp_path, capsys, extra, words):
    code = main(["ingest", src[0], str(tmp_path / "x.zarr" / "raw"), "--voxel-size", "30", "6", "6", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    for word in words:
        assert word in err[0]
    assert not (tmp_path / "x.zarr").exists()


def test_copy_stage_refuses_a_narrowing_without_rescale(src, tmp_path):
    config = RunConfig(input=src[0], output=str(tmp_path / "out"), voxel_size=(30, 6, 6),
                       blocks=BlocksConfig(shape=(5, 64, 64), chunk_shape=(5, 32, 32)),
                       stages=[StageConfig(stage="copy", params={"dtype": "uint8"})])
    with pytest.raises(UserError, match="converting uint16 to uint8 would wrap values; give params.rescale"):
        plan_run(config)
    ok = config.model_copy(update={"stages": [StageConfig(stage="copy", params={"dtype": "uint8",
                                                                               "rescale": [0, 1000]})]})
    plan_run(ok)


def test_needs_rescale():
    assert needs_rescale("uint16", "uint8") and needs_rescale("float32", "uint8") and needs_rescale("int8", "uint8")
    assert not needs_rescale("uint8", "uint16") and not needs_rescale("uint8", "uint8")
    assert not needs_rescale("uint16", "float32") and not needs_rescale("float64", "float32")


def test_large_source_is_sampled_from_chunks_everywhere(tmp_path):
    vol = create_volume(str(tmp_path / "big"), (64, 1024, 1024), np.uint16, (16, 256, 256), (1, 1, 1))
    boxes = sample_boxes(vol)
    assert 1 < len(boxes) <= 64
    assert min(b.offset[0] for b in boxes) == 0 and max(b.end[0] for b in boxes) == 64
    assert max(b.end[2] for b in boxes) == 1024
    vol.write(vol.box.__class__((48, 768, 768), (16, 256, 256)), np.full((16, 256, 256), 1000, np.uint16))
    mapping = percentile_mapping(vol)  # zeros almost everywhere, the last chunk at 1000
    assert mapping.low == 0.0 and mapping.high == pytest.approx(1000.0)
    assert mapping.sampled_voxels <= 1 << 22


def test_percentiles_leave_out_the_padding_of_smaller_sections(tmp_path):
    """A TIFF stack whose one smaller section is padded with 0 to the plane: the percentiles are those of the
    images (the padding, 2% of the voxels here, set the low end at 0 before)."""
    import tifffile

    rng = np.random.default_rng(3)
    (tmp_path / "tifs").mkdir()
    images = []
    for z in range(6):
        shape = (40, 40) if z == 2 else (64, 64)
        section = rng.normal(30000, 3000, shape).clip(1000, 65535).astype(np.uint16)
        tifffile.imwrite(tmp_path / "tifs" / f"sec_{z}.tif", section)
        images.append(section.ravel())
    vol = open_volume(str(tmp_path / "tifs"))
    assert vol.section_footprints()  # section 2 is padded
    data = vol.read(vol.box)
    assert (data == 0).mean() > 0.01
    mapping = percentile_mapping(vol)
    low, high = np.percentile(np.concatenate(images), [0.1, 99.9])
    assert mapping.low == pytest.approx(low) and mapping.high == pytest.approx(high)
    assert mapping.sampled_voxels == sum(len(i) for i in images)


def test_a_thinned_sample_of_a_padded_stack_holds_image_voxels_only(tmp_path, monkeypatch):
    """Where the volume is larger than the sample, the voxels of a stack with padded sections are thinned among its
    image voxels (every k-th), so the sample has about its size and no padding, however small the sections."""
    import tifffile

    from connectome.image import rescale as R

    (tmp_path / "tifs").mkdir()
    tifffile.imwrite(tmp_path / "tifs" / "s0.tif", np.full((64, 64), 100, np.uint16))
    for z in range(1, 6):
        tifffile.imwrite(tmp_path / "tifs" / f"s{z}.tif", np.full((2, 2), 5000 + z, np.uint16))
    vol = open_volume(str(tmp_path / "tifs"))
    monkeypatch.setattr(R, "SAMPLE_VOXELS", 100)
    values = R.sample(vol)
    assert 0 not in values and 95 <= values.size <= 100  # 4116 image voxels, every 42nd


def test_percentiles_leave_out_blank_zeros(tmp_path, capsys, client):
    """A uint16 TIFF stack with a blank section and a black corner in every section (7 % of the voxels exactly 0):
    LOW comes from the tissue, darkest ~3000 (the zeros set it at 0 before: "from [0, 50070]"); blank stays 0."""
    import tifffile

    rng = np.random.default_rng(11)
    (tmp_path / "tifs").mkdir()
    for z in range(14):
        section = rng.normal(20000, 6000, (64, 64)).clip(3000, 60000).astype(np.uint16)
        if z == 6:
            section[:] = 0  # a blank section
        section[:8, :8] = 0  # a black corner
        tifffile.imwrite(tmp_path / "tifs" / f"s{z:02d}.tif", section)
    data = open_volume(str(tmp_path / "tifs")).read(open_volume(str(tmp_path / "tifs")).box)
    zeros = int((data == 0).sum())
    assert 0.05 < zeros / data.size < 0.1
    dst = str(tmp_path / "o.zarr" / "raw")
    code, out, err = _ingest(capsys, client, str(tmp_path / "tifs"), dst, "--dtype", "uint8", "--json")
    assert code == 0, err
    rescaled = json.loads(out)["rescale"]
    low, high = np.percentile(data[data != 0], [0.1, 99.9])
    assert rescaled["low"] == pytest.approx(low) and rescaled["high"] == pytest.approx(high)
    assert rescaled["low"] >= 3000 and rescaled["zeros_left_out"] == zeros
    got = open_volume(dst).read(open_volume(dst).box)
    np.testing.assert_array_equal(got, rescale(data, low, high, np.uint8))
    assert not got[6].any() and not got[:, :8, :8].any()  # blank stays 0
    assert got[data == 3000].max() == 0 and (got[data != 0] > 0).mean() > 0.99  # the tissue spans the range
    code, out, err = _ingest(capsys, client, str(tmp_path / "tifs"), str(tmp_path / "p.zarr" / "raw"), "--dtype",
                             "uint8")
    assert code == 0 and f"leaving out {zeros} blank ones, exactly 0, that map to 0" in out, out


def test_zeros_count_where_a_source_has_negative_values(tmp_path):
    """In a signed source with negative values 0 is a grey level like any other: the percentiles keep it."""
    data = np.linspace(-1000, 1000, 4 * 32 * 32).astype(np.int16).reshape(4, 32, 32)
    data[0] = 0
    np.savez(tmp_path / "s.npz", raw=data)
    mapping = percentile_mapping(open_volume(f"{tmp_path}/s.npz#raw"))
    assert mapping.zeros_left_out == 0
    assert (mapping.low, mapping.high) == pytest.approx(tuple(np.percentile(data, [0.1, 99.9])))
