"""The one address parser: kinds, keys, section ranges, dataset names, rebasing."""

import os
import re

import numpy as np
import pytest

from connectome.core.address import absolute, is_dataset_name, parse_address, rebased
from connectome.core.errors import UserError
from connectome.core.geometry import Box
from connectome.io import create_volume, open_volume


@pytest.mark.parametrize("text, kind, base, sections", [
    ("out.zarr/raw", "zarr", "out.zarr/raw", None),
    ("precomputed://file:///tmp/x", "precomputed", "precomputed://file:///tmp/x", None),
    ("a.npz#raw", "npz", "a.npz#raw", None),
    ("a.h5#volumes/raw[10:20]", "hdf5", "a.h5#volumes/raw", slice(10, 20)),
    ("stack/*.tif[:5]", "images", "stack/*.tif", slice(None, 5)),
    ("out.zarr/raw[-4:]", "zarr", "out.zarr/raw", slice(-4, None)),
])
def test_parse(text, kind, base, sections):
    a = parse_address(text)
    assert (a.kind, a.base, a.sections) == (kind, base, sections)
    assert str(a) == text


def test_names_and_rebasing(tmp_path):
    assert is_dataset_name("affinities") and not is_dataset_name("x/affinities") and not is_dataset_name("a.npz#k")
    assert rebased("d/v.zarr/raw[1:3]", "/base") == "/base/d/v.zarr/raw[1:3]"
    assert rebased("f.h5#a/b[2:]", "/base") == "/base/f.h5#a/b[2:]"
    assert rebased("precomputed://gs://b/x", "/base") == "precomputed://gs://b/x"
    assert absolute("/abs/v.zarr") == "/abs/v.zarr"
    assert absolute("v.npz#raw") == os.path.join(os.getcwd(), "v.npz") + "#raw"


def test_section_range_is_a_read_only_volume_of_its_own(tmp_path):
    data = np.arange(10 * 4 * 4, dtype=np.uint8).reshape(10, 4, 4)
    vol = create_volume(str(tmp_path / "v"), data.shape, np.uint8, (5, 4, 4), (40, 4, 4))
    vol.write(vol.box, data)
    part = open_volume(vol.address + "[3:7]")
    assert part.shape == (4, 4, 4) and part.meta.offset == (3, 0, 0) and part.meta.voxel_size == (40, 4, 4)
    np.testing.assert_array_equal(part.read(part.box), data[3:7])
    np.testing.assert_array_equal(part.read(Box((1, 1, 0), (2, 2, 4))), data[4:6, 1:3])
    np.testing.assert_array_equal(open_volume(vol.address + "[-2:]").read(Box.from_shape((2, 4, 4))), data[8:])
    with pytest.raises(UserError, match="selects no sections"):
        open_volume(vol.address + "[7:3]")
    np.testing.assert_array_equal(open_volume(vol.address + "[0:10]").read(Box.from_shape((10, 4, 4))), data)
    for beyond, bound in (("[5:40]", 40), ("[12:]", 12), ("[-11:3]", -11)):  # Python would clip these silently
        with pytest.raises(UserError, match=rf"section {bound} lies beyond the volume's 10 sections"):
            open_volume(vol.address + beyond)
    with pytest.raises(UserError, match="read-only"):
        open_volume(vol.address + "[3:7]", "r+")
    with pytest.raises(UserError, match="cannot create a section range"):
        create_volume(str(tmp_path / "w") + "[0:2]", (2, 4, 4), np.uint8, (2, 4, 4), (1, 1, 1))


def test_lies_within_the_output_directory(tmp_path, monkeypatch):
    from connectome.core.address import lies_within

    (tmp_path / "out" / "raw").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "out")
    monkeypatch.chdir(tmp_path)
    assert lies_within("out/raw", str(tmp_path / "out")) and lies_within(str(tmp_path / "link" / "raw"), "out")
    assert lies_within(f"precomputed://file://{tmp_path}/out/seg", "out/")
    assert not lies_within("elsewhere/raw", "out") and not lies_within("out2/raw", "out")
    assert not lies_within("precomputed://gs://bucket/raw", "out")
    assert lies_within("out/raw[0:4]", "out") and not lies_within("out/raw", "run[2]")  # a folder named run[2]


@pytest.mark.parametrize("text, found", [
    ("precomputed://ftp://x/y", "found scheme ftp:// after precomputed://"),
    ("precomputed://x/y", "found 'x/y' after precomputed://"),
    ("precomputed:///abs/layer", "found '/abs/layer' after precomputed://"),
    ("precomputed://", "found nothing after precomputed://"),
    ("precomputed://gs://", "found no path after gs://"),
    ("precomputed://ftp://x/y[0:4]", "found scheme ftp:// after precomputed://"),
])
def test_a_precomputed_address_of_an_unsupported_scheme_is_refused(text, found):
    """(audit43 V10) `precomputed://ftp://x/y` was read by cloud-volume as the local folder `./ftp:/x/y`."""
    with pytest.raises(UserError, match=re.escape(
            f"{text}: expected precomputed://SCHEME://PATH with SCHEME one of file://, gs://, s3://, http://, "
            f"https://") + r"(, [^ ]+://)* " + re.escape(f"(e.g. precomputed://file:///abs/path), {found}")):
        parse_address(text)
    # cloud-volume's other protocols and aliases are a lab's too (CAVE's middleauth+https, matrix://; review43)
    for ok in ("precomputed://file:///x/y", "precomputed://gs://b/x", "precomputed://s3://b/x[2:]",
               "precomputed://https://h/x", "precomputed://middleauth+https://h/x", "precomputed://matrix://b/x"):
        assert parse_address(ok).kind == "precomputed"


def test_ingest_to_an_unsupported_scheme_writes_nothing(tmp_path, monkeypatch, capsys):
    from connectome.cli.main import main

    src = create_volume(str(tmp_path / "raw"), (4, 8, 8), np.uint8, (4, 8, 8), (8.0, 8.0, 8.0))
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", src.address, "precomputed://ftp://x/y", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "found scheme ftp:// after precomputed://" in err, err
    assert sorted(os.listdir(tmp_path)) == ["raw"]
