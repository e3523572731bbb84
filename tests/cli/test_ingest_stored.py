"""`connectome ingest` of a zarr already stored as the destination would be: chunk files copied as they are."""

from __future__ import annotations

import numpy as np

from connectome.cli.main import main
from connectome.io import create_volume, open_volume

from run_case import last_json


def _files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("c/**/*")) if p.is_file()}


def test_matching_zarr_is_copied_as_stored_and_resumes(tmp_path, capsys):
    data = np.random.default_rng(0).integers(0, 255, (16, 64, 96), dtype=np.uint8)
    data[:8, :32, :32] = 0  # a chunk of fill value only: not stored, and not copied
    src = create_volume(str(tmp_path / "src"), data.shape, np.uint8, (8, 32, 32), (30.0, 4.0, 4.0))
    src.write(src.box, data)
    dst = tmp_path / "dst"
    assert main(["ingest", src.address, str(dst), "--chunk-shape", "8", "32", "32", "--json"]) == 0
    report = last_json(capsys.readouterr().out)
    assert report["copied_as_stored"] and report["files"] == 11
    assert _files(dst / "0") == _files(tmp_path / "src" / "0")
    out = open_volume(str(dst))
    np.testing.assert_array_equal(out.read(out.box), data)
    assert out.meta.voxel_size == (30.0, 4.0, 4.0)
    (dst / "0" / "c" / "1" / "1" / "2").unlink()  # a copy that stopped early: only what is missing is copied
    assert main(["ingest", src.address, str(dst), "--chunk-shape", "8", "32", "32", "--json"]) == 0
    assert last_json(capsys.readouterr().out)["files"] == 1
    np.testing.assert_array_equal(out.read(out.box), data)


def test_other_chunks_are_decoded_and_encoded(tmp_path, capsys):
    data = np.random.default_rng(1).integers(0, 255, (16, 64, 64), dtype=np.uint8)
    src = create_volume(str(tmp_path / "src"), data.shape, np.uint8, (8, 32, 32), (30.0, 4.0, 4.0))
    src.write(src.box, data)
    dst = tmp_path / "dst"
    assert main(["ingest", src.address, str(dst), "--chunk-shape", "16", "32", "32", "--json", "--no-progress",
                 "--workers", "1"]) == 0
    report = last_json(capsys.readouterr().out)
    assert "copied_as_stored" not in report and report["ran"] == report["blocks"]
    out = open_volume(str(dst))
    assert out.meta.chunk_shape == (16, 32, 32)
    np.testing.assert_array_equal(out.read(out.box), data)


def test_the_summary_counts_one_block_or_chunk_file_in_the_singular(tmp_path, capsys):
    """"1 block written", "1 chunk file copied as stored" (it said "1 blocks written")."""
    data = np.random.default_rng(2).integers(1, 255, (8, 32, 32), dtype=np.uint8)
    src = create_volume(str(tmp_path / "src"), data.shape, np.uint8, (8, 32, 32), (30.0, 4.0, 4.0))
    src.write(src.box, data)
    assert main(["ingest", src.address, str(tmp_path / "one"), "--chunk-shape", "8", "32", "32"]) == 0
    assert "(1 chunk file copied as stored, " in capsys.readouterr().out
    assert main(["ingest", src.address, str(tmp_path / "blocks"), "--chunk-shape", "8", "16", "32", "--block-shape",
                 "8", "32", "32", "--no-progress", "--workers", "1"]) == 0
    assert "(1 block written, 0 already done)" in capsys.readouterr().out
    assert main(["ingest", src.address, str(tmp_path / "two"), "--chunk-shape", "8", "16", "32", "--block-shape",
                 "8", "16", "32", "--no-progress", "--workers", "1"]) == 0
    assert "(2 blocks written, 0 already done)" in capsys.readouterr().out


def test_a_voxel_size_that_looks_given_as_x_y_z_is_noted_after_the_volume_is_written(tmp_path, capsys):
    """Sections 10x finer than their pixels (a lab's `--voxel-size 4.6 4.6 50`): one note, after the summary."""
    data = np.random.default_rng(0).integers(0, 255, (8, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "src.npz", raw=data)
    for name, size, noted in (("xyz", ["4.6", "4.6", "50"], True), ("zyx", ["50", "4.6", "4.6"], False),
                              ("iso", ["8", "8", "8"], False)):
        assert main(["ingest", f"{tmp_path / 'src.npz'}#raw", str(tmp_path / name), "--voxel-size", *size,
                     "--no-progress"]) == 0
        err = [line for line in capsys.readouterr().err.splitlines() if "X Y Z" in line]
        if noted:
            assert len(err) == 1 and err[0].endswith("--voxel-size 50 4.6 4.6 --overwrite"), err
        else:
            assert not err, err
    assert open_volume(str(tmp_path / "xyz")).meta.voxel_size == (4.6, 4.6, 50.0)  # written as given
