"""TIFF/PNG stacks whose sections differ in size: read centred on the largest, padded with 0, said in one line;
a stack of mixed dtypes or colour sections is refused in one line before anything is written; a real ssTEM
stack cropped unevenly aligns as well as the uncropped one."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from connectome.cli.main import main
from connectome.core.errors import UserError
from connectome.io import open_volume
from connectome.io.image_stack import ImageStackVolume

from conftest import data_file

SHAPES = [(40, 50), (36, 50), (40, 43), (31, 27)]  # the largest y and x come from different sections


def _sections(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(1, 255, shape, dtype=np.uint8) for shape in SHAPES[:n]]


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_sections_of_several_sizes_are_centred_on_the_largest(tmp_path, suffix):
    for z, section in enumerate(_sections(4)):
        path = tmp_path / f"s{z}{suffix}"
        tifffile.imwrite(path, section) if suffix == ".tif" else Image.fromarray(section).save(path)
    volume = open_volume(str(tmp_path))
    assert isinstance(volume, ImageStackVolume) and volume.shape == (4, 40, 50)
    assert [(p.z, p.shape, p.offset) for p in volume.padded] == [(1, (36, 50), (2, 0)), (2, (40, 43), (0, 3)),
                                                                 (3, (31, 27), (4, 11))]
    stack = volume.read(volume.box)
    for z, section in enumerate(_sections(4)):
        y, x = (0, 0) if z == 0 else volume.padded[z - 1].offset
        h, w = section.shape
        np.testing.assert_array_equal(stack[z, y:y + h, x:x + w], section)
        outside = np.ones(stack.shape[1:], bool)
        outside[y:y + h, x:x + w] = False
        assert not stack[z][outside].any()  # the padding is 0 (the sections hold no 0)
    assert volume.section_footprints() == {1: (2, 0, 36, 50), 2: (0, 3, 40, 43), 3: (4, 11, 31, 27)}
    assert open_volume(f"{tmp_path}[2:4]").section_footprints() == {0: (0, 3, 40, 43), 1: (4, 11, 31, 27)}
    # a box that cuts through the padding reads the same as the whole stack there
    from connectome.core.geometry import Box

    box = Box((1, 3, 5), (3, 30, 40))
    np.testing.assert_array_equal(volume.read(box), stack[box.to_slices()])


def _ingest(capsys, src, dst, *extra):
    code = main(["ingest", str(src), str(dst), "--voxel-size", "50", "4", "4", "--json", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip().splitlines()


def test_ingest_says_how_a_stack_of_several_sizes_is_padded(tmp_path, capsys):
    (tmp_path / "tifs").mkdir()
    for z, section in enumerate(_sections(3)):
        tifffile.imwrite(tmp_path / "tifs" / f"sec_{z}.tif", section)
    code, out, err = _ingest(capsys, tmp_path / "tifs", tmp_path / "out")
    assert code == 0, err
    notes = [line for line in err if "padded with 0" in line]
    assert len(notes) == 1 and "2 of 3 sections" in notes[0] and "40 x 50 px" in notes[0] and "sec_1.tif" in notes[0]
    assert not [line for line in err if "not read as sections" in line]
    written = open_volume(json.loads(out.strip().splitlines()[-1])["volume"])
    stacked = open_volume(str(tmp_path / "tifs"))
    np.testing.assert_array_equal(written.read(written.box), stacked.read(stacked.box))
    # the zarr records which part of each section holds image data (align flags the rest)
    assert written.section_footprints() == stacked.section_footprints() == {1: (2, 0, 36, 50), 2: (0, 3, 40, 43)}
    # a copy of that zarr keeps them
    code, out, err = _ingest(capsys, written.address, tmp_path / "again")
    assert code == 0, err
    assert open_volume(str(tmp_path / "again")).section_footprints() == stacked.section_footprints()


@pytest.mark.parametrize("bad, words", [
    (np.ones((40, 50), np.uint16), ["sec_2.tif", "dtype uint16", "expected uint8", "sec_0.tif"]),
    (np.ones((40, 50, 3), np.uint8), ["sec_2.tif", "2-d grayscale", "(40, 50, 3)"]),
    (np.ones((2, 40, 50), np.uint8), ["sec_2.tif", "2-d grayscale", "(2, 40, 50)"]),  # a multi-page section file
])
def test_a_stack_of_mixed_dtypes_or_colour_sections_is_refused_in_one_line(tmp_path, capsys, bad, words):
    (tmp_path / "tifs").mkdir()
    for z, section in enumerate([*_sections(2), bad]):
        tifffile.imwrite(tmp_path / "tifs" / f"sec_{z}.tif", section)
    with pytest.raises(UserError):
        open_volume(str(tmp_path / "tifs"))
    code, _, err = _ingest(capsys, tmp_path / "tifs", tmp_path / "out")
    assert code == 2 and len(err) == 1, err
    for word in words:
        assert word in err[0], (word, err[0])
    assert not (tmp_path / "out").exists()


def _consecutive_ncc(address: str, margin: int = 96) -> np.ndarray:
    volume = open_volume(address)
    stack = volume.read(volume.box).astype(np.float64)[:, margin:-margin, margin:-margin]
    stack -= stack.mean(axis=(1, 2), keepdims=True)
    a, b = stack[:-1], stack[1:]
    return (a * b).sum(axis=(1, 2)) / np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))


@pytest.mark.timeout(300)
def test_real_sections_cropped_unevenly_align_as_well_as_the_whole_sections(tmp_path, capsys):
    """ISBI 2012 sections saved whole, and saved cropped to different sizes (so centring them shifts the
    tissue by up to 16 px): `connectome align` of the cropped stack makes consecutive sections agree as well
    as it does for the whole ones, and much better than the padded sections as read."""
    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        raw = f["train_raw"][:4]
    crops = [np.s_[:, :], np.s_[10:502, 20:500], np.s_[0:480, 0:512], np.s_[30:512, 8:504]]
    for name, cut in (("whole", [np.s_[:, :]] * 4), ("cropped", crops)):
        (tmp_path / name).mkdir()
        for z in range(4):
            tifffile.imwrite(tmp_path / name / f"sec_{z:03d}.tif", raw[z][cut[z]])
        assert main(["align", str(tmp_path / name), str(tmp_path / f"{name}_out"), "--voxel-size", "50", "4", "4",
                     "--json", "--no-progress"]) == 0
        capsys.readouterr()
    as_read = _consecutive_ncc(str(tmp_path / "cropped"))
    whole = _consecutive_ncc(str(tmp_path / "whole_out" / "aligned"))
    cropped = _consecutive_ncc(str(tmp_path / "cropped_out" / "aligned"))
    assert (cropped > whole - 0.05).all(), (cropped, whole)
    assert (cropped[1:] > as_read[1:] + 0.1).all(), (cropped, as_read)  # sections 1-3 were shifted by the crops
    # the padding and the warp's margins are flagged outside (3) in `defects`, and only where `aligned` is 0
    # (ISBI's raw holds no 0), so `segment --mask` leaves them out
    from connectome.alignment.defects import OUTSIDE_FLAG

    aligned, defects = (open_volume(str(tmp_path / "cropped_out" / n)) for n in ("aligned", "defects"))
    a, d = aligned.read(aligned.box), defects.read(defects.box)
    outside = d == OUTSIDE_FLAG
    assert not a[outside].any() and (a == 0).sum() == outside.sum()
    for z, (_, _, h, w) in open_volume(str(tmp_path / "cropped")).section_footprints().items():
        assert outside[z].mean() >= 1 - h * w / (512 * 512) - 0.01, z  # at least the padding's share
    # ingested to zarr first, as the README's TIFF flow does: the same alignment, the same flags
    assert main(["ingest", str(tmp_path / "cropped"), str(tmp_path / "lab.zarr" / "raw"), "--voxel-size", "50", "4",
                 "4", "--json", "--no-progress"]) == 0
    assert main(["align", str(tmp_path / "lab.zarr" / "raw"), str(tmp_path / "lab_out"), "--json",
                 "--no-progress"]) == 0
    capsys.readouterr()
    via_zarr = open_volume(str(tmp_path / "lab_out" / "defects"))
    np.testing.assert_array_equal(via_zarr.read(via_zarr.box), d)


def test_a_stray_image_of_another_dtype_is_the_one_named(tmp_path, capsys):
    """An 8-bit overview.png among 16-bit sections sorted first: the refusal names it, not the sections."""
    from PIL import Image

    (tmp_path / "tifs").mkdir()
    for z, section in enumerate(_sections(3)):
        tifffile.imwrite(tmp_path / "tifs" / f"sec_{z}.tif", section.astype(np.uint16) * 200)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "tifs" / "a_overview.png")
    code, _, err = _ingest(capsys, tmp_path / "tifs", tmp_path / "out")
    assert code == 2 and len(err) == 1, err
    assert f"{tmp_path / 'tifs' / 'a_overview.png'}: dtype uint8, expected uint16 as 3 of the 4 sections" in err[0], err


def _cut(path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _png(path, section) -> None:
    Image.fromarray(section).save(path, format="PNG")


def _damage(path) -> None:  # cut short inside its image data (a copy that stopped, a full disk)
    _cut(path, path.stat().st_size // 2)


@pytest.mark.parametrize("suffix, damage, words", [
    (".tif", _damage, ["truncated: expected 2000 bytes of image data, found"]),  # found nothing named before
    (".tif", lambda p: _cut(p, 0), ["empty file: expected a TIFF section, found 0 bytes"]),
    (".tif", lambda p: p.write_text("not an image"), ["expected a TIFF section", "not a TIFF file"]),
    (".tif", lambda p: _png(p, np.ones((40, 50), np.uint8)), ["expected a TIFF section", "not a TIFF file"]),
    (".png", _damage, ["truncated: expected a PNG that ends with its IEND chunk",
                                                          "inside its IDAT chunk"]),
    (".png", lambda p: _cut(p, 0), ["empty file: expected a PNG section, found 0 bytes"]),
    (".png", lambda p: p.write_text("not an image"), ["expected a PNG section", "cannot identify image file"]),
])
def test_a_section_file_that_cannot_be_read_whole_is_refused_in_one_line_naming_it(tmp_path, capsys, suffix, damage,
                                                                                    words):
    """A truncated, empty or foreign file among a stack's sections: one line naming it and what is wrong, exit 2,
    before anything is written (a truncated TIFF failed block 0 with `failed to read 50176 bytes, got 2744`,
    naming no file; a truncated PNG failed the block too, an empty or foreign one with a traceback)."""
    (tmp_path / "secs").mkdir()
    rng = np.random.default_rng(5)
    for z in range(5):
        section = rng.integers(0, 255, (40, 50), np.uint8)
        path = tmp_path / "secs" / f"cremi_{z:02d}{suffix}"
        tifffile.imwrite(path, section) if suffix == ".tif" else _png(path, section)
    bad = tmp_path / "secs" / f"cremi_03{suffix}"
    damage(bad)
    with pytest.raises(UserError, match=str(bad)):
        open_volume(str(tmp_path / "secs"))
    code, _, err = _ingest(capsys, tmp_path / "secs", tmp_path / "out.zarr" / "raw")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"connectome ingest: error: {bad}: "), err
    for word in words:
        assert word in err[0], (word, err[0])
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_truncated_multipage_tiff_is_refused_in_one_line(tmp_path, capsys, compression):
    """One multi-page TIFF cut in half: one line naming it, exit 2, nothing written (it failed the block with an
    IndexError, after tifffile's own log lines about an invalid page offset)."""
    rng = np.random.default_rng(6)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (6, 40, 50), np.uint8), compression=compression,
                     metadata=None if compression else {})
    _cut(path, path.stat().st_size // 2)
    code, _, err = _ingest(capsys, path, tmp_path / "out.zarr" / "raw")
    assert code == 2 and len(err) == 1, err  # (tifffile's log lines held back)
    assert err[0].startswith(f"connectome ingest: error: {path}: ") and ("truncated" in err[0] or "damaged" in err[0])
    assert not (tmp_path / "out.zarr").exists()
    _cut(path, 0)
    code, _, err = _ingest(capsys, path, tmp_path / "out.zarr" / "raw")
    assert code == 2 and err == [f"connectome ingest: error: {path}: empty file: expected a TIFF stack, found 0 bytes"]


def test_a_multipage_tiff_cut_between_pages_is_not_read_as_a_shorter_stack(tmp_path):
    """Cut right after the data of its third page, a 6-page TIFF opened as a whole stack of 3 sections; tifffile
    only logged the broken chain of pages. It is refused, naming the file."""
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.random.default_rng(6).integers(0, 255, (6, 40, 50), np.uint8), compression="zlib",
                     metadata=None)
    with tifffile.TiffFile(path) as tf:
        end = tf.pages[2].dataoffsets[0] + tf.pages[2].databytecounts[0]
    _cut(path, end)
    with pytest.raises(UserError, match=f"^{path}: damaged TIFF: invalid page offset .* expected a whole TIFF stack"):
        open_volume(str(path))


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_a_section_cut_short_after_the_stack_was_opened_is_named_when_read(tmp_path, suffix):
    """A file that breaks between the plan and its block: the block's failure names it and what is wrong (it said
    `ValueError: failed to read 2000 bytes, got ...`, naming no file)."""
    (tmp_path / "secs").mkdir()
    for z, section in enumerate(_sections(3)):
        path = tmp_path / "secs" / f"s{z}{suffix}"
        tifffile.imwrite(path, section) if suffix == ".tif" else _png(path, section)
    volume = open_volume(str(tmp_path / "secs"))
    bad = tmp_path / "secs" / f"s1{suffix}"
    _cut(bad, bad.stat().st_size // 2)
    with pytest.raises(UserError, match=f"^{bad}: truncated: expected "):
        volume.read(volume.box)


def test_a_section_whose_data_cannot_be_decoded_is_named_when_read(tmp_path):
    """Whole by its header but its compressed data garbage: decoded only when a block reads it, which names it."""
    (tmp_path / "secs").mkdir()
    for z, section in enumerate(_sections(3)):
        tifffile.imwrite(tmp_path / "secs" / f"s{z}.tif", section, compression="zlib")
    bad = tmp_path / "secs" / "s2.tif"
    with tifffile.TiffFile(bad) as tf:
        offset, count = tf.pages[0].dataoffsets[0], tf.pages[0].databytecounts[0]
    raw = bytearray(bad.read_bytes())
    raw[offset:offset + count] = bytes(count)
    bad.write_bytes(bytes(raw))
    volume = open_volume(str(tmp_path / "secs"))  # (the header is whole)
    with pytest.raises(UserError, match=f"^{bad}: expected a readable section, found image data that cannot be "):
        volume.read(volume.box)


def test_a_png_with_bytes_after_its_end_is_read(tmp_path):
    """Bytes after a PNG's IEND chunk (some writers pad files) are no truncation: the section is read."""
    (tmp_path / "secs").mkdir()
    for z, section in enumerate(_sections(2)):
        _png(tmp_path / "secs" / f"s{z}.png", section)
    with open(tmp_path / "secs" / "s1.png", "ab") as f:
        f.write(bytes(100))
    volume = open_volume(str(tmp_path / "secs"))
    np.testing.assert_array_equal(volume.read(volume.box)[1, 2:38], _sections(2)[1])


def test_files_that_are_not_sections_are_named_in_one_note(tmp_path, capsys):
    """A lab's folder holds more than sections: notes, an overview image, a subfolder, the Mac's hidden files.
    They are not read (a hidden `._sec_0.tif` is no TIFF) and, but the hidden ones, named in one line."""
    (tmp_path / "tifs" / "raw_scans").mkdir(parents=True)
    for z in range(3):
        tifffile.imwrite(tmp_path / "tifs" / f"sec_{z}.tif", np.full((40, 50), 10 * z, np.uint8))
    for name in ("acquisition_notes.txt", "overview.jpg", ".DS_Store", "._sec_0.tif"):
        (tmp_path / "tifs" / name).write_bytes(b"not a section")
    code, out, err = _ingest(capsys, tmp_path / "tifs", tmp_path / "out")
    assert code == 0, err
    notes = [line for line in err if "not read as sections" in line]
    assert notes == [f"connectome: note: {tmp_path / 'tifs'}: 3 TIFF/PNG sections read; not read as sections: "
                     "acquisition_notes.txt, overview.jpg, raw_scans"], err
    assert open_volume(json.loads(out.strip().splitlines()[-1])["volume"]).shape == (3, 40, 50)
