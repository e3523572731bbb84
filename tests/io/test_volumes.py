import re

import numpy as np
import pytest
import tifffile
from PIL import Image

from connectome.core.errors import UserError
from connectome.core.geometry import BlockGrid, Box
from connectome.io import create_volume, open_volume


def _random(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


@pytest.mark.parametrize("kind", ["zarr", "precomputed"])
@pytest.mark.parametrize("dtype,channels", [(np.uint8, None), (np.uint64, None), (np.uint8, 3)])
def test_round_trip_by_chunk_aligned_boxes(tmp_path, kind, dtype, channels):
    shape = (20, 40, 48)
    address = str(tmp_path / "v.zarr" / "vol") if kind == "zarr" else f"precomputed://file://{tmp_path}/vol"
    vol = create_volume(address, shape, dtype, (10, 16, 16), (40.0, 4.0, 4.0), offset=(0, 32, 16), channels=channels)
    data = _random(shape if channels is None else (channels, *shape), dtype)
    for block in BlockGrid.for_chunks(Box.from_shape(shape), (10, 32, 32), (10, 16, 16)):
        s = block.write_box.to_slices()
        vol.write(block.write_box, data[s] if channels is None else data[(slice(None), *s)])
    again = open_volume(address)
    assert again.meta.voxel_size == (40.0, 4.0, 4.0)
    assert again.meta.offset == (0, 32, 16)
    assert again.meta.channels == channels
    assert again.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(again.read(again.box), data)
    inner = Box((3, 5, 7), (4, 20, 9))
    expected = data[inner.to_slices()] if channels is None else data[(slice(None), *inner.to_slices())]
    np.testing.assert_array_equal(again.read(inner), expected)


def test_ome_zarr_metadata(tmp_path):
    import json

    create_volume(str(tmp_path / "out" / "raw"), (8, 16, 16), np.uint8, (8, 8, 8), (30.0, 8.0, 8.0), offset=(2, 0, 1))
    meta = json.loads((tmp_path / "out" / "raw" / "zarr.json").read_text())["attributes"]["ome"]
    ms = meta["multiscales"][0]
    assert meta["version"] == "0.5"
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    transforms = ms["datasets"][0]["coordinateTransformations"]
    assert transforms[0]["scale"] == [30.0, 8.0, 8.0]
    # voxel 0's centre (OME: Neuroglancer and napari draw voxel centres there): voxel i spans [(2 + i) 30, ...] nm in
    # z, as a precomputed volume of voxel_offset 2 and our meshes place it (it was [60, 0, 8]: half a voxel off)
    assert transforms[1]["translation"] == [75.0, 4.0, 12.0]


@pytest.mark.parametrize("channels", [None, 2])
def test_rewriting_a_block_removes_partial_chunk_files_of_a_killed_write(tmp_path, channels):
    """zarr writes `<chunk>.<uuid>.partial` then renames; a kill in between leaves the file behind."""
    address = str(tmp_path / "out" / "seg")
    vol = create_volume(address, (8, 16, 32), np.uint8, (8, 16, 16), (1, 1, 1), channels=channels)
    lead = "0/" if channels else ""
    left = tmp_path / "out" / "seg" / "0" / "c" / f"{lead}0/0/0.0123abcd.partial"
    other = tmp_path / "out" / "seg" / "0" / "c" / f"{lead}0/0/1.4567ef01.partial"
    for path in (left, other):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a chunk")
    first = Box((0, 0, 0), (8, 16, 16))
    data = np.full((8, 16, 16) if channels is None else (channels, 8, 16, 16), 5, np.uint8)
    vol.write(first, data)
    assert not left.exists()
    assert other.exists(), "a partial file of a chunk outside the written box was removed"
    np.testing.assert_array_equal(open_volume(address).read(first), data)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_chunks_left_all_zero_have_no_file_and_partial_writes_keep_neighbours(tmp_path, dtype):
    address = str(tmp_path / "seg")
    vol = create_volume(address, (8, 16, 40), dtype, (8, 16, 16), (1, 1, 1))  # chunks: x 0-16, 16-32, 32-40
    chunk_file = lambda x: tmp_path / "seg" / "0" / "c" / "0" / "0" / str(x)  # noqa: E731
    data = np.zeros((8, 16, 40), dtype)
    data[:, :, 20] = 3
    data[:, :, 35] = -0.0 if dtype == np.float32 else 0
    vol.write(vol.box, data)
    assert [chunk_file(x).exists() for x in range(3)] == [False, True, dtype == np.float32]
    vol.write(Box((0, 0, 16), (8, 16, 16)), np.zeros((8, 16, 16), dtype))  # emptied: its file goes
    assert not chunk_file(1).exists()
    vol.write(Box((0, 0, 4), (8, 16, 16)), np.full((8, 16, 16), 7, dtype))  # covers no chunk whole
    expected = np.zeros((8, 16, 40), dtype)
    expected[:, :, 4:20] = 7
    expected[:, :, 35] = data[:, :, 35]
    again = open_volume(address).read(vol.box)
    np.testing.assert_array_equal(again.view(f"u{again.itemsize}"), expected.view(f"u{expected.itemsize}"))


def test_pickled_volume_reopens_by_address(tmp_path):
    import pickle

    vol = create_volume(str(tmp_path / "a"), (4, 8, 8), np.uint8, (4, 8, 8), (1, 1, 1))
    vol.write(vol.box, np.full((4, 8, 8), 7, np.uint8))
    clone = pickle.loads(pickle.dumps(vol))
    assert clone.writable and clone.address == vol.address
    assert (clone.read(clone.box) == 7).all()


def test_read_only_sources(tmp_path):
    data = _random((6, 20, 30), np.uint8)
    np.savez_compressed(tmp_path / "d.npz", raw=data)
    import h5py

    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("raw", data=data, chunks=(2, 10, 10))
    tifffile.imwrite(tmp_path / "stack.tif", data)
    (tmp_path / "pngs").mkdir()
    (tmp_path / "tifs").mkdir()
    for z in range(6):  # natural sort: 10 after 9, not after 1
        Image.fromarray(data[z]).save(tmp_path / "pngs" / f"s{z * 5}.png")
        tifffile.imwrite(tmp_path / "tifs" / f"sec_{z * 5}.tif", data[z])
    box = Box((1, 3, 4), (4, 10, 20))
    for address in [f"{tmp_path}/d.npz#raw", f"{tmp_path}/d.h5#raw", f"{tmp_path}/stack.tif",
                    f"{tmp_path}/pngs", f"{tmp_path}/tifs"]:
        vol = open_volume(address)
        assert vol.shape == (6, 20, 30), address
        assert not vol.meta.voxel_size_known
        np.testing.assert_array_equal(vol.read(box), data[box.to_slices()], err_msg=address)
        with pytest.raises(UserError, match="read-only"):
            open_volume(address, "r+")


def test_bad_addresses_name_the_problem(tmp_path):
    np.savez(tmp_path / "d.npz", raw=np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(UserError, match=r"no such file or directory"):
        open_volume(str(tmp_path / "missing.zarr"))
    with pytest.raises(UserError, match=r"no key 'nope'; keys are \['raw'\]"):
        open_volume(f"{tmp_path}/d.npz#nope")
    with pytest.raises(UserError, match="no precomputed 'info' file"):
        open_volume(f"precomputed://file://{tmp_path}/nothing")
    vol = create_volume(str(tmp_path / "a"), (4, 8, 8), np.uint8, (4, 8, 8), (1, 1, 1))
    with pytest.raises(UserError, match="exists with shape"):
        create_volume(str(tmp_path / "a"), (4, 8, 9), np.uint8, (4, 8, 8), (1, 1, 1))
    with pytest.raises(ValueError, match="outside the volume"):
        vol.read(Box((0, 0, 0), (5, 1, 1)))


def test_a_file_group_folder_or_range_that_is_not_a_volume_is_named(tmp_path):
    import h5py

    np.savez(tmp_path / "d.npz", raw=np.zeros((2, 2, 2), np.uint8), gt=np.zeros((2, 2, 2), np.uint32))
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("volumes/raw", data=np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    cases = {
        f"{tmp_path}/d.npz": r"d.npz#KEY naming one array inside the file; its arrays are \['gt', 'raw'\]",
        f"{tmp_path}/d.h5": r"d.h5#KEY naming one array inside the file; its arrays are \['volumes/raw'\]",
        f"{tmp_path}/d.h5#volumes": r"a group, not a dataset: 'volumes'; datasets are \['volumes/raw'\]",
        f"{tmp_path}/d.h5#nope": r"no dataset 'nope'; datasets are \['volumes/raw'\]",
        f"{tmp_path}/empty": "or a folder of TIFF/PNG sections; found an empty folder",
        f"{tmp_path}/notes.txt": "a file, expected a zarr array or group",
        f"{tmp_path}/d.npz#raw[a:b]": r"section range \[a:b\]: expected \[z0:z1\]",
        f"{tmp_path}/d.npz#raw[3]": r"no key 'raw\[3\]'",  # keys may hold brackets (HDF5 groups): a key
        f"{tmp_path}/d.zarr/raw[3]": r"section range \[3\]: expected \[z0:z1\]",
        f"{tmp_path}/d.npz#raw[0:4:2]": r"section range \[0:4:2\]: expected \[z0:z1\]",
    }
    for address, message in cases.items():
        with pytest.raises(UserError, match=message):
            open_volume(address)
    assert open_volume(f"{tmp_path}/d.h5#volumes/raw").shape == (2, 4, 4)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f.create_dataset("grp[1]", data=np.zeros((2, 4, 4), np.uint8))
    assert open_volume(f"{tmp_path}/g.h5#grp[1]").shape == (2, 4, 4)
    assert open_volume(f"{tmp_path}/d.npz#raw[1:]").shape == (1, 2, 2)


def test_damaged_npz_and_hdf5_files_are_one_line_in_every_command(tmp_path, capsys):
    """A text file named .npz, a truncated .npz, an .npy under an .npz name, an object array and a
    text file named .h5: one line naming the file (and key), exit 2, no traceback."""
    from connectome.cli.main import main

    good = tmp_path / "good.npz"
    np.savez(good, gt=np.ones((2, 4, 4), np.uint32))
    (tmp_path / "text.npz").write_text("not numbers")
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:60])
    with open(tmp_path / "single.npz", "wb") as f:
        np.save(f, np.zeros((2, 4, 4), np.uint8))
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}, None], dtype=object))
    (tmp_path / "text.h5").write_text("not HDF5")
    cases = {
        "text.npz#a": r"text.npz: expected an .npz archive of arrays, found a file numpy cannot read \(not a zip",
        "cut.npz#gt": r"cut.npz: expected an .npz archive of arrays, found a file numpy cannot read",
        "single.npz#a": r"single.npz: expected an .npz archive of arrays \(np.savez\), found a single .npy array",
        "objects.npz#a": r"objects.npz: key 'a': expected a numeric array, .*\(Python objects, not numbers\)",
        "text.h5#a": r"text.h5: expected an HDF5 file, found one h5py cannot open",
    }
    for address, message in cases.items():
        with pytest.raises(UserError, match=message):
            open_volume(f"{tmp_path}/{address}")
        assert main(["evaluate", "--seg", f"{tmp_path}/{address}", "--gt", f"{good}#gt"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, (address, err)
        assert re.search(message, err), (address, err)


def test_an_npz_files_resolution_is_its_arrays_voxel_size(tmp_path, capsys):
    """`resolution_zyx_nm` in an .npz (the shared data's files carry it) is the voxel size of its arrays for every
    command, as `evaluate` read it before: `segment` needs no --voxel-size, and a contradicting one is refused in one
    line; a file without it still asks for one."""
    from connectome.cli.main import main

    raw = (np.random.default_rng(0).random((8, 32, 32)) * 255).astype(np.uint8)
    np.savez(tmp_path / "a.npz", raw=raw, resolution_zyx_nm=np.array([40, 4, 4]))
    np.savez(tmp_path / "b.npz", raw=raw)
    meta = open_volume(f"{tmp_path}/a.npz#raw[2:6]").meta
    assert meta.voxel_size_known and tuple(meta.voxel_size) == (40.0, 4.0, 4.0)
    assert not open_volume(f"{tmp_path}/b.npz#raw").meta.voxel_size_known
    common = ["--model", "sstem", "--no-progress", "--workers", "1", "--block-shape", "8", "32", "32"]
    assert main(["segment", f"{tmp_path}/a.npz#raw", str(tmp_path / "out-a"), *common, "--voxel-size", "40", "4", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "[40.0, 4.0, 4.0]" in err and "[40.0, 4.0, 5.0]" in err
    assert main(["segment", f"{tmp_path}/b.npz#raw", str(tmp_path / "out-b"), *common]) == 2
    assert "carries no voxel size" in capsys.readouterr().err
    assert main(["segment", f"{tmp_path}/a.npz#raw", str(tmp_path / "out-a"), *common]) == 0


def test_a_zarr_another_tool_wrote_has_no_voxel_size_of_ours_and_is_not_refused_for_it(tmp_path):
    """A plain zarr v3 array (no `connectome` metadata) carries no voxel size we read: it is unknown, so it may be
    given as a stage input beside an 8 nm raw (it was taken as 1 x 1 x 1 nm, and the plan's voxel-size check
    refused it), and as the raw it asks for --voxel-size."""
    import zarr

    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import plan_run

    raw = create_volume(str(tmp_path / "raw"), (16, 32, 32), np.uint8, (16, 32, 32), (8.0, 8.0, 8.0))
    plain = zarr.create_array(str(tmp_path / "plain.zarr"), shape=(16, 32, 32), chunks=(16, 32, 32), dtype="uint64")
    plain[:] = 1
    assert not open_volume(str(tmp_path / "plain.zarr")).meta.voxel_size_known
    assert open_volume(raw.address).meta.voxel_size_known
    config = RunConfig(input=raw.address, output=str(tmp_path / "out"), blocks=BlocksConfig(shape=(16, 32, 32)),
                       cluster=ClusterConfig(),
                       stages=[StageConfig(stage="skeletons", inputs={"segmentation": str(tmp_path / "plain.zarr")})])
    assert plan_run(config).stages[0].stage.name == "skeletons"
    with pytest.raises(UserError, match="carries no voxel size"):
        plan_run(config.model_copy(update={"input": str(tmp_path / "plain.zarr"), "stages": [StageConfig(stage="skeletons")]}))
