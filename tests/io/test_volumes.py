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
    __import__("zarr").open_group(str(tmp_path / "out"), mode="w")  # an output folder (a group) holding volumes
    for name in ("aligned", "defects"):
        create_volume(str(tmp_path / "out" / name), (2, 4, 4), np.uint8, (2, 4, 4), (40.0, 4.0, 4.0))
    cases = {
        f"{tmp_path}/out": rf"scale-0 array '0'; it holds aligned, defects: give one of them, e.g. {tmp_path}/out/aligned",
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


def _precomputed(tmp_path, name="pc", shape=(8, 16, 16), chunks=(4, 8, 8), offset=(0, 0, 0)):
    address = f"precomputed://file://{tmp_path}/{name}"
    vol = create_volume(address, shape, np.uint8, chunks, (8.0, 8.0, 8.0), offset=offset)
    data = _random(shape, np.uint8)
    vol.write(vol.box, data)
    return address, tmp_path / name, data


def test_a_precomputed_info_that_is_not_json_is_one_line_naming_it(tmp_path, capsys):
    """(audit43 C01/C06) A damaged `info` gave a 52-line orjson traceback naming no file."""
    from connectome.cli.main import main

    address, folder, _ = _precomputed(tmp_path)
    (folder / "info").write_text('{"type": "image", \n')
    with pytest.raises(UserError, match=rf"^{re.escape(str(folder / 'info'))}: not valid JSON \(unexpected end"):
        open_volume(address)
    np.savez(tmp_path / "gt.npz", gt=np.ones((8, 16, 16), np.uint32))
    assert main(["evaluate", "--seg", f"{tmp_path}/gt.npz#gt", "--gt", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and f"{folder / 'info'}: not valid JSON" in err, err


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["scales"][0].pop("size"), r"key 'scales\[0\].size' is missing; expected 3 whole numbers >= 1"),
    (lambda d: d.pop("data_type"), r"key 'data_type' is missing; expected a numpy dtype name"),
    (lambda d: d.pop("scales"), r"key 'scales' is missing; expected a list of scale objects"),
    (lambda d: d.update(scales=[]), r"key 'scales': expected a list of scale objects, scale 0 first, found \[\]"),
    (lambda d: d["scales"][0].update(chunk_sizes=[[8, 8]]), r"key 'scales\[0\].chunk_sizes': expected a list holding 3"),
    (lambda d: d["scales"][0].update(resolution="8nm"), r"key 'scales\[0\].resolution': expected 3 positive numbers.*"
                                                         r"found \"8nm\""),
    (lambda d: d.update(num_channels=0), r"key 'num_channels': expected a whole number >= 1, found 0"),
    (lambda d: d["scales"][0].pop("key"), r"key 'scales\[0\].key' is missing"),
    (lambda d: d["scales"][0].update(encoding="bogus"), r"key 'scales\[0\].encoding': expected one of .*jpeg.*raw.*"
                                                        r"found 'bogus'"),
    (lambda d: d["scales"][0].update(encoding="compressed_segmentation"),
     r"key 'scales\[0\].encoding': 'compressed_segmentation' stores uint32 or uint64 chunks, but data_type is 'uint8'"),
])
def test_a_precomputed_info_lacking_a_key_is_one_line_naming_file_and_key(tmp_path, damage, message):
    """(audit43 C02/C07) An info without `scales[0].size` gave a traceback `KeyError: 'size'`; a damaged info is
    not taken for a missing one (it was replaced) by create_volume unless asked to overwrite."""
    import json

    address, folder, _ = _precomputed(tmp_path)
    info = json.loads((folder / "info").read_text())
    damage(info)
    (folder / "info").write_text(json.dumps(info))
    before = (folder / "info").read_bytes()
    with pytest.raises(UserError, match=rf"^{re.escape(str(folder / 'info'))}: {message}"):
        open_volume(address)
    with pytest.raises(UserError, match=rf"{message}.*\(pass --overwrite to replace the volume\)$"):
        create_volume(address, (8, 16, 16), np.uint8, (4, 8, 8), (8.0, 8.0, 8.0))
    assert (folder / "info").read_bytes() == before
    assert create_volume(address, (8, 16, 16), np.uint8, (4, 8, 8), (8.0, 8.0, 8.0), overwrite=True).shape == (8, 16, 16)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["scales"][0].update(key="4_4_40"), r"scales\[0\].key '4_4_40' names no folder \(.*/4_4_40 does not "
                                                    r"exist\)"),
    (lambda d: d["scales"][0].update(chunk_sizes=[[16, 16, 8]]), r"none of scale 0's chunk files is in .*/8.0_8.0_8.0 \("
                                                                 r"chunk 0 would be 0-16_0-16_0-8; it holds 8 other"),
])
def test_a_precomputed_layer_none_of_whose_chunks_is_there_is_refused(tmp_path, capsys, change, message):
    """(audit45) A scale key naming no folder, or chunk_sizes that are not those of the files, read every chunk as
    zeros: `segment` warned, then segmented an empty volume into thousands of ids, exit 0. Now one line, exit 2."""
    import json

    from connectome.cli.main import main

    address, folder, _ = _precomputed(tmp_path)
    info = json.loads((folder / "info").read_text())
    change(info)
    (folder / "info").write_text(json.dumps(info))
    out = tmp_path / "out"
    assert main(["segment", address, str(out), "--voxel-size", "8", "8", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(rf"{re.escape(str(folder / 'info'))}: {message}", err), err
    assert not out.exists()


def test_a_precomputed_info_that_is_no_object_is_named(tmp_path):
    address, folder, _ = _precomputed(tmp_path)
    (folder / "info").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"pc/info: expected a JSON object \(the layer's metadata\), found \[1, 2\]"):
        open_volume(address)


def test_a_damaged_precomputed_chunk_names_its_files(tmp_path):
    """(audit43 C05) A truncated chunk failed a run with `deflate.DeflateError: Decompression failed`, naming no file;
    as a zarr chunk is, the chunk files of the read box that cannot be decoded are named (in the layer's voxel
    coordinates, with their compression suffix), and the rest of the volume still reads."""
    address, folder, data = _precomputed(tmp_path, offset=(2, 0, 16))
    scale = next(p for p in folder.iterdir() if p.is_dir())
    files = sorted(scale.iterdir())
    assert len(files) == 8, files
    bad = [scale / f for f in ("16-24_0-8_2-6", "16-24_8-16_6-10")]
    bad = [next(p for p in files if p.name.startswith(b.name)) for b in bad]
    for p in bad:  # (cut to its gzip header, a chunk decodes to no bytes, which cloud-volume reads as missing: 0)
        p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2])
    vol = open_volume(address)
    with pytest.raises(OSError, match=rf"^{re.escape(str(bad[0]))}: cannot decode this chunk of {re.escape(address)} "
                                      rf"\(.*\); 1 more chunk file\(s\) of this box cannot be decoded either: "
                                      rf"{re.escape(str(bad[1]))}$"):
        vol.read(vol.box)
    with pytest.raises(OSError, match=rf"^{re.escape(str(bad[1]))}: cannot decode this chunk .*\)$"):
        vol.read(Box((4, 8, 0), (4, 8, 8)))
    np.testing.assert_array_equal(vol.read(Box((0, 0, 8), (8, 16, 8))), data[:, :, 8:])


def _uncompressed(folder):
    """The layer at `folder` with its chunk files stored without compression (as other tools write them)."""
    import gzip

    scale = next(p for p in folder.iterdir() if p.is_dir())
    for p in scale.glob("*.gz"):
        p.with_suffix("").write_bytes(gzip.decompress(p.read_bytes()))
        p.unlink()


CHUNK = r"expected 256 bytes of raw 8 x 8 x 4 \(x y z\) uint8 voxels"  # a chunk of _precomputed's layer


@pytest.mark.parametrize("stored, damage, found", [
    pytest.param("gzip", lambda b: b[:7], r", gzip-compressed, found 7 bytes that decompress to nothing",
                 id="gz-cut-to-7"),
    pytest.param("gzip", lambda b: b[:-4] + bytes(4), r", gzip-compressed, found \d+ bytes that decompress to nothing",
                 id="gz-length-field-zeroed"),
    pytest.param("gzip", lambda b: __import__("gzip").compress(b""),
                 r", gzip-compressed, found \d+ bytes that decompress to nothing", id="gz-of-nothing"),
    pytest.param("gzip", lambda b: b"", r", gzip-compressed, found an empty file", id="gz-empty"),
    pytest.param("gzip", lambda b: b[:len(b) // 2],
                 r", gzip-compressed, found \d+ bytes that gzip cannot decompress \(.*\)", id="gz-cut-to-half"),
    pytest.param("gzip", lambda b: bytes(len(b)), r", gzip-compressed, found \d+ bytes that are not gzip data",
                 id="gz-zeroed"),
    pytest.param("raw", lambda b: b"", r", found an empty file", id="raw-empty"),
    pytest.param("raw", lambda b: b[:7], r", found 7 bytes", id="raw-cut-to-7"),
    pytest.param("raw", lambda b: b + bytes(13), r", found 269 bytes", id="raw-too-long"),
])
def test_a_damaged_precomputed_chunk_is_never_read_as_zeros(tmp_path, stored, damage, found):
    """(audit: a gzip chunk cut to 7 bytes, one whose length field is zeros, and an empty raw chunk were read as
    zeros without a word: cloud-volume takes a chunk file that is empty or decompresses to nothing for a missing
    one.) Every damaged chunk file a read touches is refused in one line naming the file, what was expected and
    what was found; a box that does not touch it still reads."""
    address, folder, data = _precomputed(tmp_path, offset=(2, 0, 16))
    if stored == "raw":
        _uncompressed(folder)
    scale = next(p for p in folder.iterdir() if p.is_dir())
    bad = next(p for p in scale.iterdir() if p.name.startswith("16-24_8-16_6-10"))
    bad.write_bytes(damage(bad.read_bytes()))
    vol = open_volume(address)
    line = rf"^{re.escape(str(bad))}: cannot decode this chunk of {re.escape(address)} \({CHUNK}{found}\)$"
    for box in (vol.box, Box((4, 8, 0), (4, 8, 8)), Box((5, 9, 3), (1, 1, 1))):
        with pytest.raises(OSError, match=line):
            vol.read(box)
    np.testing.assert_array_equal(vol.read(Box((0, 0, 0), (8, 8, 16))), data[:, :8])


def test_a_precomputed_chunk_cut_to_7_bytes_is_one_line_in_a_command(tmp_path, capsys):
    """The command reading it stops with exit code 2 and one line naming the file, without a traceback."""
    from connectome.cli.main import main

    address, folder, _ = _precomputed(tmp_path)
    scale = next(p for p in folder.iterdir() if p.is_dir())
    bad = next(p for p in scale.iterdir() if p.name.startswith("8-16_0-8_4-8"))
    bad.write_bytes(bad.read_bytes()[:7])
    np.savez(tmp_path / "seg.npz", seg=np.ones((8, 16, 16), np.uint32))
    assert main(["evaluate", "--seg", f"{tmp_path}/seg.npz#seg", "--gt", address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{bad}: cannot decode this chunk of {address} (expected 256 bytes" in err, err
    assert "found 7 bytes that decompress to nothing" in err, err


@pytest.mark.parametrize("stored", ["gzip", "raw"])
def test_zero_and_missing_precomputed_chunks_still_read_as_zeros(tmp_path, stored, monkeypatch):
    """A chunk file holding zeros and a chunk with no file are background, as before; a read looks again only at
    the files of chunks it read as all zeros, once each (a good image is not read twice)."""
    from connectome.io.precomputed import PrecomputedVolume

    address, folder, data = _precomputed(tmp_path)
    vol = open_volume(address, "r+")
    data[4:, :8, 8:] = 0
    vol.write(Box((4, 0, 8), (4, 8, 8)), data[4:, :8, 8:])  # a chunk of zeros: its file holds them
    if stored == "raw":
        _uncompressed(folder)
    scale = next(p for p in folder.iterdir() if p.is_dir())
    assert any(p.name.startswith("8-16_0-8_4-8") for p in scale.iterdir())
    next(p for p in scale.iterdir() if p.name.startswith("0-8_8-16_0-4")).unlink()
    data[:4, 8:, :8] = 0
    looked, real = [], PrecomputedVolume._chunk_problem
    monkeypatch.setattr(PrecomputedVolume, "_chunk_problem",
                        lambda vol, chunk: looked.append(chunk) or real(vol, chunk))
    vol = open_volume(address)
    np.testing.assert_array_equal(vol.read(vol.box), data)
    np.testing.assert_array_equal(vol.read(Box((2, 3, 4), (5, 9, 10))), data[2:7, 3:12, 4:14])
    assert sorted(c.offset for c in looked) == [(0, 8, 0), (4, 0, 8)]
    assert vol.missing_chunks() == (1, 8, ["0-8_8-16_0-4"])


def test_a_missing_precomputed_chunk_is_said_as_a_zarr_one(tmp_path, capsys):
    """A precomputed input with a chunk file gone read as zeros without a word (only zarr inputs were checked):
    the same warning, and `--strict-input` refuses it."""
    from connectome.engine.inputs import check_input_chunks

    address, folder, _ = _precomputed(tmp_path, offset=(2, 0, 16))
    assert check_input_chunks(address) == 0 and capsys.readouterr().err == ""
    scale = next(p for p in folder.iterdir() if p.is_dir())
    gone = next(p for p in scale.iterdir() if p.name.startswith("16-24_8-16_6-10"))
    gone.unlink()
    assert check_input_chunks(address) == 1
    err = capsys.readouterr().err
    assert "1 of 8 input chunk files are missing and read as zeros (first: 16-24_8-16_6-10)" in err, err
    with pytest.raises(UserError, match="--strict-input refuses an input with missing chunks"):
        check_input_chunks(address, strict=True)


def test_leading_axes_of_length_1_are_read_as_one_image_in_every_format(tmp_path, capsys):
    """(audit43 E04) An npz holding `raw[None]` was taken for a 1-channel volume and crashed inside a block
    (`data shape (1, 0, 36, 64, 104) != box shape (3, 16, 64, 64)`); session 44 refused it in npz and HDF5, while
    a bare zarr (1, z, y, x) still crashed so and OME-Zarr's (t, c, z, y, x) with t = c = 1 (as bioformats2raw
    writes it) was refused. Leading axes of length 1 are now dropped in every format: such an array is its one
    image, and (1, c, z, y, x) a volume of c channels."""
    import h5py
    import zarr

    from connectome.cli.main import main

    raw = _random((8, 32, 32), np.uint8)
    np.savez(tmp_path / "v.npz", plain=raw, one=raw[None], five=raw[None, None], two=np.stack([raw, raw]))
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("one", data=raw[None])
        f.create_dataset("five", data=np.stack([raw, raw])[None])
    for name, data in (("one", raw[None]), ("five", raw[None, None]), ("c2", np.stack([raw, raw])[None])):
        array = zarr.open(str(tmp_path / f"{name}.zarr"), mode="w", shape=data.shape, chunks=(1, *data.shape[1:-2],
                                                                                                  16, 16), dtype="uint8")
        array[:] = data
    box = Box((2, 4, 8), (5, 20, 16))
    expected = raw[2:7, 4:24, 8:24]
    for address in (f"{tmp_path}/v.npz#one", f"{tmp_path}/v.npz#five", f"{tmp_path}/v.h5#one",
                    f"{tmp_path}/one.zarr", f"{tmp_path}/five.zarr", f"{tmp_path}/v.npz#one[2:7]"):
        volume = open_volume(address)
        assert volume.meta.channels is None and volume.meta.shape[1:] == (32, 32), address
        if address.endswith("[2:7]"):
            assert (volume.read(Box((0, 4, 8), (5, 20, 16))) == expected).all()
        else:
            assert (volume.read(box) == expected).all(), address
    for address in (f"{tmp_path}/v.npz#two", f"{tmp_path}/v.h5#five", f"{tmp_path}/c2.zarr"):
        volume = open_volume(address)
        assert volume.meta.channels == 2, address
        assert (volume.read(box) == np.stack([expected, expected])).all(), address
    zarr_files = open_volume(f"{tmp_path}/five.zarr").source_files(box)
    assert zarr_files is not None and all(key.startswith("c/0/0/") for key in zarr_files[1]), zarr_files
    for bad, shape in (("t2", (2, 1, 8, 32, 32)), ("six", (1, 1, 1, 8, 32, 32))):
        np.savez(tmp_path / f"{bad}.npz", a=np.zeros(shape, np.uint8))
        with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path))}/{bad}.npz#a: expected a 3-d .* found "
                                            rf"shape {re.escape(str(shape))}$"):
            open_volume(f"{tmp_path}/{bad}.npz#a")

    plain, one = tmp_path / "plain", tmp_path / "one"
    for address, out in ((f"{tmp_path}/v.npz#plain", plain), (f"{tmp_path}/one.zarr", one)):
        code = main(["segment", address, str(out), "--voxel-size", "8", "8", "8", "--no-progress", "--workers", "1"])
        assert code == 0, capsys.readouterr().err
    a, b = open_volume(str(plain / "segmentation")), open_volume(str(one / "segmentation"))
    assert (a.read(a.box) == b.read(b.box)).all()


def _foreign_ome_zarr(path, multiscales, data):
    """An OME-Zarr 0.5 image group as another tool writes it: its levels named in `multiscales`."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    level = multiscales[0]["datasets"][0]["path"] if multiscales and multiscales[0].get("datasets") else "0"
    array = group.create_array(level, shape=data.shape, chunks=data.shape, dtype=data.dtype)
    array[:] = data
    return str(path)


def test_an_ome_zarr_another_tool_wrote_gives_its_level_and_voxel_size(tmp_path, capsys):
    """A lab's OME-Zarr (bioformats2raw, ome-zarr-py, tensorstore writers): its finest level is the one its
    multiscales name (`s0` here), and its voxel size is its scale in nm (micrometres here), so no --voxel-size is
    needed; before 2026-12-06 only a level named `0` was found and the voxel size was unknown."""
    from connectome.engine.inputs import input_voxel_size

    raw = _random((8, 32, 32), np.uint8)
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            *({"name": a, "type": "space", "unit": "micrometer"} for a in "zyx")]
    datasets = [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 0.04, 0.004, 0.004]}]}]
    address = _foreign_ome_zarr(tmp_path / "lab.ome.zarr", [{"axes": axes, "datasets": datasets}], raw[None, None])
    volume = open_volume(address)
    assert volume.meta.channels is None and (volume.read(volume.box) == raw).all()
    # taken where none is given (with a note), never compared: a placeholder scale (1 micrometre, as many writers
    # put) must not refuse a --voxel-size (review45)
    assert not volume.meta.voxel_size_known and np.allclose(volume.meta.suggested_voxel_size, (40, 4, 4))
    assert input_voxel_size(address, volume.meta, None) == (40.0, 4.0, 4.0)
    assert "voxel size [40.0, 4.0, 4.0] nm (z y x) from its OME-Zarr metadata" in capsys.readouterr().err
    assert input_voxel_size(address, volume.meta, (30, 4, 4)) == (30.0, 4.0, 4.0)
    assert open_volume(f"{address}[2:6]").meta.suggested_voxel_size == volume.meta.suggested_voxel_size

    unitless = [{"axes": [{"name": a, "type": "space"} for a in "zyx"],
                 "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [8, 8, 8]}]}]}]
    assert open_volume(_foreign_ome_zarr(tmp_path / "unitless.zarr", unitless, raw)).meta.suggested_voxel_size is None
    with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path))}/bad.zarr/zarr.json: cannot read "
                                        r"ome.multiscales\[0\] .*KeyError"):
        open_volume(_foreign_ome_zarr(tmp_path / "bad.zarr", [{"axes": axes}], raw))


def test_an_unchanged_table_record_is_not_rewritten(tmp_path):
    """Every run rewrote each table folder's format.json, which changed the folder's time; the merge tree keys its
    partial results on that time, so a killed merge recomputed every finished task on the next run (review43)."""
    import os

    from connectome.io.tables import read_format, write_format

    folder = tmp_path / "edges"
    write_format(str(folder), "edges", 3, {"stage": "agglomerate", "hash": "abc"})
    os.utime(folder, ns=(1, 1))
    write_format(str(folder), "edges", 3, {"stage": "agglomerate", "hash": "abc"})
    assert folder.stat().st_mtime_ns == 1
    write_format(str(folder), "edges", 3, {"stage": "agglomerate", "hash": "other"})  # another run: rewritten
    assert folder.stat().st_mtime_ns != 1 and read_format(str(folder))["producer"]["hash"] == "other"
    (folder / "format.json").write_text("{")  # damaged: written anew
    write_format(str(folder), "edges", 3, {"stage": "agglomerate", "hash": "abc"})
    assert read_format(str(folder))["producer"]["hash"] == "abc"


def test_the_finest_level_array_addressed_itself_keeps_the_images_metadata(tmp_path, capsys):
    """`seg.zarr/0` (the array inside our OME-Zarr group) reads with the group's voxel size, offset and channels,
    so `evaluate --seg seg.zarr/0` scores in nm (it took 1 1 1 nm, said 'none found'); a coarser level does not."""
    import json

    from connectome.cli.main import main

    labels = np.zeros((3, 32, 32), np.uint32)
    labels[:, :, :16], labels[:, :, 16:] = 1, 2
    vol = create_volume(str(tmp_path / "seg.zarr"), labels.shape, np.uint32, (3, 16, 16), (50, 4, 4), offset=(2, 0, 0))
    vol.write(vol.box, labels)
    level = open_volume(str(tmp_path / "seg.zarr" / "0"))
    assert (level.meta.voxel_size, level.meta.offset, level.meta.voxel_size_known) == ((50, 4, 4), (2, 0, 0), True)
    np.testing.assert_array_equal(level.read(level.box), labels)
    np.savez(tmp_path / "gt.npz", gt=labels)
    assert main(["evaluate", "--seg", str(tmp_path / "seg.zarr" / "0"), "--gt", f"{tmp_path / 'gt.npz'}#gt",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["voxel_size"] == [50.0, 4.0, 4.0]


def test_zarr_v2_arrays_and_ome_zarr_0_4_images_are_read_not_written(tmp_path):
    """A lab's zarr v2 store (bioformats2raw / ome-zarr-py write OME-Zarr 0.4 in it) is read, with the 0.4
    multiscales' scale as the suggested voxel size; it is refused as an output in one line (was 'no zarr.json')."""
    import zarr

    data = (np.arange(8 * 32 * 32) % 251).astype(np.uint8).reshape(8, 32, 32)
    bare = zarr.open_array(str(tmp_path / "arr.zarr"), mode="w", zarr_format=2, shape=data.shape, dtype="u1",
                           chunks=(4, 16, 16))
    bare[:] = data
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w", zarr_format=2)
    group.create_array("s0", shape=(1, 1, *data.shape), dtype="u1", chunks=(1, 1, 4, 16, 16))[:] = data[None, None]
    space = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "t", "type": "time"},
                                                              {"name": "c", "type": "channel"}, *space],
                                   "datasets": [{"path": "s0", "coordinateTransformations": [
                                       {"type": "scale", "scale": [1, 1, 40, 4, 4]}]}]}]
    for name, suggested in (("arr.zarr", None), ("ome.zarr", (40.0, 4.0, 4.0))):
        vol = open_volume(str(tmp_path / name))
        np.testing.assert_array_equal(vol.read(vol.box), data)
        assert vol.meta.suggested_voxel_size == suggested and vol.missing_chunks()[0] == 0
    with pytest.raises(UserError, match=r"zarr v2 store \(\.zarray\) is read here, not written"):
        open_volume(str(tmp_path / "arr.zarr"), "r+")
    # given as an output (ingest SRC V2_FOLDER, also with --overwrite): refused before anything is written into it
    for name in ("arr.zarr", "ome.zarr"):
        before = sorted(p.relative_to(tmp_path) for p in (tmp_path / name).rglob("*"))
        for overwrite in (False, True):
            with pytest.raises(UserError, match=r"zarr v2 store \(\.z(array|group)\) is read here, not written"):
                create_volume(str(tmp_path / name), data.shape, np.uint8, (4, 16, 16), (40, 4, 4), overwrite=overwrite)
        assert sorted(p.relative_to(tmp_path) for p in (tmp_path / name).rglob("*")) == before
        np.testing.assert_array_equal(open_volume(str(tmp_path / name)).read(Box((0, 0, 0), data.shape)), data)


def _bioformats2raw(path, images, unit="micrometer", scale=(0.04, 0.004, 0.004), series_attr=True):
    """A zarr v2 folder as bioformats2raw (layout version 3, OME-Zarr 0.4) writes it: `.zgroup` and `.zattrs`
    {"bioformats2raw.layout": 3} at the root; one image group per series, `0`, `1`, ..., each with its multiscales and
    omero attributes and its levels `0` (finest), `1` as 5-d (t, c, z, y, x) arrays with '/'-nested chunk keys and
    blosc lz4; and the `OME` group with `METADATA.ome.xml` and (bioformats2raw 0.3+) the series listed in its
    `.zattrs`."""
    import json

    import numcodecs
    import zarr

    def write_json(file, value):
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(value, indent=2))

    write_json(path / ".zgroup", {"zarr_format": 2})
    write_json(path / ".zattrs", {"bioformats2raw.layout": 3})
    xml = "".join(f'<Image ID="Image:{i}" Name="series {i}"><Pixels ID="Pixels:{i}" DimensionOrder="XYZCT" '
                  f'Type="uint8" SizeX="{d.shape[2]}" SizeY="{d.shape[1]}" SizeZ="{d.shape[0]}" SizeC="1" SizeT="1"/>'
                  f"</Image>" for i, d in enumerate(images))
    (path / "OME").mkdir()
    (path / "OME" / "METADATA.ome.xml").write_text(
        f'<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">{xml}'
        "</OME>")
    write_json(path / "OME" / ".zgroup", {"zarr_format": 2})
    if series_attr:
        write_json(path / "OME" / ".zattrs", {"series": [str(i) for i in range(len(images))]})
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"},
            *({"name": a, "type": "space", "unit": unit} for a in "zyx")]
    for i, data in enumerate(images):
        image = path / str(i)
        write_json(image / ".zgroup", {"zarr_format": 2})
        datasets = []
        for level, factor in (("0", 1), ("1", 2)):
            values = data[:, ::factor, ::factor]
            array = zarr.open_array(str(image / level), mode="w", zarr_format=2, shape=(1, 1, *values.shape),
                                    chunks=(1, 1, 4, 16, 16), dtype="u1", dimension_separator="/",
                                    compressor=numcodecs.Blosc(cname="lz4", clevel=5, shuffle=1))
            array[:] = values[None, None]
            (image / level / ".zattrs").unlink(missing_ok=True)  # (bioformats2raw writes only .zarray)
            datasets.append({"path": level, "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 1.0, scale[0], scale[1] * factor, scale[2] * factor]}]})
        write_json(image / ".zattrs", {
            "multiscales": [{"metadata": {"method": "loci.common.image.SimpleImageScaler", "version": "Bio-Formats 7"},
                             "axes": axes, "name": f"series {i}", "datasets": datasets, "version": "0.4"}],
            "omero": {"channels": [{"active": True, "color": "808080", "label": "EM",
                                    "window": {"start": 0, "end": 255, "min": 0, "max": 255}}],
                      "rdefs": {"defaultT": 0, "defaultZ": 0, "model": "greyscale"}}})
    return path


def test_a_bioformats2raw_folder_reads_as_its_one_image_and_names_the_series_of_several(tmp_path, capsys):
    """(lab walk-through) `x.zarr` as bioformats2raw writes it (bioformats2raw.layout 3: the image one level down at
    `x.zarr/0`, beside `OME/METADATA.ome.xml`) was refused as "the OME-Zarr scale-0 node '0' is a group"; it reads as
    its one image, with its scale as the suggested voxel size. A collection of several images is one line naming the
    addresses to choose from (exit 2 in a command); `x.zarr/1` reads that image."""
    from connectome.cli.main import main

    data = (np.arange(8 * 32 * 32) % 251).astype(np.uint8).reshape(8, 32, 32)
    one = _bioformats2raw(tmp_path / "one.zarr", [data])
    for address in (str(one), f"{one}/", f"{one}/0"):
        volume = open_volume(address)
        np.testing.assert_array_equal(volume.read(volume.box), data)
        assert volume.meta.channels is None and volume.meta.chunk_shape == (4, 16, 16), address
        assert volume.meta.suggested_voxel_size == pytest.approx((40.0, 4.0, 4.0)), address
        assert volume.missing_chunks()[0] == 0 and volume.source_files(volume.box)[0] == f"{one}/0/0", address
    np.testing.assert_array_equal(open_volume(f"{one}[2:6]").read(Box((0, 0, 0), (4, 32, 32))), data[2:6])
    # the older layout without the series listed (bioformats2raw before 0.3): the groups 0, 1, ...
    (one / "OME" / ".zattrs").unlink()
    np.testing.assert_array_equal(open_volume(str(one)).read(Box((0, 0, 0), data.shape)), data)

    other = data[::-1].copy()
    two = _bioformats2raw(tmp_path / "two.zarr", [data, other])
    np.testing.assert_array_equal(open_volume(f"{two}/1").read(Box((0, 0, 0), data.shape)), other)
    message = (rf"^{re.escape(str(two))}: a bioformats2raw collection of 2 images \(series in {re.escape(str(two))}"
               rf"/OME/\.zattrs\); expected one: give the address of the image to read, one of "
               rf"{re.escape(str(two))}/0, {re.escape(str(two))}/1$")
    with pytest.raises(UserError, match=message):
        open_volume(str(two))
    np.savez(tmp_path / "gt.npz", gt=np.ones(data.shape, np.uint32))
    assert main(["evaluate", "--seg", str(two), "--gt", f"{tmp_path / 'gt.npz'}#gt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and re.search(message[1:-1], err), err
    (two / "OME" / ".zattrs").unlink()  # no series listed: the groups 0 and 1 are the two
    with pytest.raises(UserError, match=r"collection of 2 images \(groups 0, 1, \.\.\. of .*two\.zarr\); .*two\.zarr/1$"):
        open_volume(str(two))

    (one / "OME" / ".zattrs").write_text('{"series": "0"}')
    with pytest.raises(UserError, match=rf"^{re.escape(str(one))}/OME/\.zattrs: series: expected a list of image "
                                        r"group paths, found '0'$"):
        open_volume(str(one))
    (one / "OME" / ".zattrs").write_text('{"series": ["image"]}')
    with pytest.raises(UserError, match=rf"^{re.escape(str(one))}: a bioformats2raw collection \(series in .*\); "
                                        rf"expected its image group, found no group {re.escape(str(one))}/image$"):
        open_volume(str(one))
    (one / ".zattrs").write_text('{"bioformats2raw.layout": 2}')
    with pytest.raises(UserError, match=rf"^{re.escape(str(one))}/\.zattrs: bioformats2raw.layout is 2; expected 3"):
        open_volume(str(one))
    (one / ".zattrs").write_text('{"bioformats2raw.layout": 3, "plate": {"wells": [{"path": "B/3"}]}}')
    with pytest.raises(UserError, match=rf"^{re.escape(str(one))}/\.zattrs: plate: expected one image, found a "
                                        rf"bioformats2raw plate; .* e\.g\. {re.escape(str(one))}/B/3/0$"):
        open_volume(str(one))


def test_a_bioformats2raw_collection_in_zarr_v3_is_read_as_its_image_and_not_written(tmp_path):
    """The same layout in OME-Zarr 0.5 (zarr v3: `bioformats2raw.layout` and `series` under "ome") reads as its one
    image; it is not written into (an output at its address is refused in one line)."""
    import zarr

    data = (np.arange(4 * 16 * 16) % 251).astype(np.uint8).reshape(4, 16, 16)
    root = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    root.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    image = root.create_group("0")
    image.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [30, 5, 5]}]}]}]}
    image.create_array("0", shape=data.shape, dtype="u1", chunks=(4, 8, 8))[:] = data
    root.create_group("OME").attrs["ome"] = {"version": "0.5", "series": ["0"]}
    volume = open_volume(str(tmp_path / "x.zarr"))
    np.testing.assert_array_equal(volume.read(volume.box), data)
    assert volume.meta.suggested_voxel_size == (30.0, 5.0, 5.0)
    with pytest.raises(UserError, match=r"x\.zarr: a bioformats2raw collection is read here, not written"):
        create_volume(str(tmp_path / "x.zarr"), data.shape, np.uint8, (4, 8, 8), (30, 5, 5))


def test_the_finest_level_of_a_zarr_v2_ome_zarr_image_addressed_itself_keeps_its_voxel_size(tmp_path):
    """`x.zarr/0/0` (bioformats2raw's image `0`, its finest level `0`) read with no voxel size: only a v3 group above
    the array counted. A v2 (OME-Zarr 0.4) image group counts the same way; its coarser level `1` does not."""
    data = (np.arange(8 * 32 * 32) % 251).astype(np.uint8).reshape(8, 32, 32)
    store = _bioformats2raw(tmp_path / "x.zarr", [data], unit="nanometer", scale=(40.0, 4.0, 4.0))
    level = open_volume(f"{store}/0/0")
    assert level.meta.suggested_voxel_size == (40.0, 4.0, 4.0) and not level.meta.voxel_size_known
    assert level.meta == open_volume(f"{store}/0").meta == open_volume(str(store)).meta
    np.testing.assert_array_equal(level.read(level.box), data)
    assert open_volume(f"{store}/0/1").meta.suggested_voxel_size is None  # (not the finest level)


def test_a_rewritten_chunk_of_a_zarr_v2_input_recomputes_the_blocks_that_read_it(tmp_path, capsys):
    """Only zarr v3 inputs recorded their chunk files (`source_files`), so a resume after a chunk of a lab's v2 input
    was rewritten in place skipped every block and kept the old result. A v2 input's chunk files are recorded and
    compared the same way: the blocks that read the rewritten chunk run again, as with a v3 input
    (tests/engine/test_changed_input.py)."""
    import json

    import yaml
    import zarr

    from connectome.cli.main import main

    shape, chunk = (8, 128, 128), (8, 32, 32)
    rng = np.random.default_rng(0)
    raw = zarr.open_array(str(tmp_path / "raw.zarr"), mode="w", zarr_format=2, shape=shape, chunks=chunk, dtype="u1")
    raw[:] = rng.integers(0, 255, shape, dtype=np.uint8)

    def run(out: str) -> tuple[dict, str]:
        config = tmp_path / f"{out}.yaml"
        config.write_text(yaml.safe_dump({
            "input": str(tmp_path / "raw.zarr"), "output": str(tmp_path / out), "voxel_size": [40, 4, 4],
            "blocks": {"shape": list(chunk), "chunk_shape": list(chunk)}, "cluster": {"n_workers": 1},
            "stages": [{"stage": "normalize", "params": {"sigma": 4}}]}))
        assert main(["run", str(config), "--json", "--no-progress"]) == 0
        captured = capsys.readouterr()
        return json.loads(captured.out.strip().splitlines()[-1]), captured.err

    assert run("out")[0]["stages"][0]["ran"] == 16
    raw[:, :32, :32] = rng.integers(0, 255, chunk, dtype=np.uint8)  # one chunk of the input rewritten in place
    assert main(["status", str(tmp_path / "out"), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)["stages"][0]
    assert status["lost"] == 4 and status["first_lost"]["input"] == "raw"
    assert status["first_lost"]["file"] == str(tmp_path / "raw.zarr" / "0.0.0")
    again, err = run("out")
    assert again["stages"][0]["ran"] == 4 and again["stages"][0]["skipped"] == 12
    assert "4 finished block(s) read input raw, which changed since they ran (block 0:" in err
    clean, _ = run("clean")
    a, b = open_volume(again["volumes"]["normalized"]), open_volume(clean["volumes"]["normalized"])
    np.testing.assert_array_equal(a.read(a.box), b.read(b.box))
    assert run("out")[0]["stages"][0]["ran"] == 0  # recorded anew
