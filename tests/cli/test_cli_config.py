"""Bad input gets one line on stderr, exit code 2, no traceback, and nothing written."""

import json

import numpy as np
import pytest
import yaml

from connectome.cli.main import main
from connectome.io import create_volume, open_volume


@pytest.fixture
def raw_zarr(tmp_path):
    vol = create_volume(str(tmp_path / "in" / "raw"), (8, 64, 64), np.uint8, (8, 32, 32), (40.0, 4.0, 4.0))
    vol.write(vol.box, np.random.default_rng(0).integers(0, 255, (8, 64, 64), dtype=np.uint8))
    return vol.address


def _config(tmp_path, **overrides):
    cfg = {
        "input": str(tmp_path / "in" / "raw"),
        "output": str(tmp_path / "out"),
        "blocks": {"shape": [8, 32, 32], "chunk_shape": [8, 32, 32]},
        "cluster": {"n_workers": 1},
        "stages": [{"stage": "normalize", "params": {"sigma": 4}}],
    }
    cfg.update(overrides)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _one_line_error(capsys, argv, expected):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert expected in err[0], err[0]
    return err[0]


@pytest.mark.parametrize("overrides,expected", [
    ({"input": "/nonexistent/raw.zarr"}, "/nonexistent/raw.zarr: no such file or directory"),
    ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ({"stages": [{"stage": "normalise"}]}, "unknown stage 'normalise'; known stages:"),
    ({"stages": [{"stage": "normalize", "params": {"sigma": -1}}]}, "stages.0.params (normalize): sigma: Input should be greater than 0"),
    ({"stages": [{"stage": "normalize", "params": {"radius": 3}}]}, "radius: Extra inputs are not permitted"),
    ({"blocks": {"shape": [8, 48, 48], "chunk_shape": [8, 32, 32]}}, "block shape [8, 48, 48]: expected a multiple of the output chunk shape [8, 32, 32]"),
    ({"voxel_size": [30, 4, 4]}, "has voxel size [40.0, 4.0, 4.0] nm, but [30.0, 4.0, 4.0] was given"),
    ({"blocks": {"shape": [8, 32]}}, "blocks.shape"),
])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, raw_zarr, overrides, expected):
    _one_line_error(capsys, ["run", _config(tmp_path, **overrides)], expected)
    assert not (tmp_path / "out").exists()


def test_wrong_dtype_is_refused(tmp_path, capsys):
    vol = create_volume(str(tmp_path / "in" / "raw"), (8, 64, 64), np.uint64, (8, 32, 32), (40.0, 4.0, 4.0))
    _one_line_error(capsys, ["run", _config(tmp_path)], "has dtype uint64, expected uint8 or uint16 or float32")
    assert not (tmp_path / "out").exists() and vol is not None


def test_missing_and_broken_config_files(tmp_path, capsys):
    _one_line_error(capsys, ["run", str(tmp_path / "nope.yaml")], "nope.yaml: no such config file")
    _one_line_error(capsys, ["run", str(tmp_path)], f"{tmp_path}: is a folder; expected a YAML config file")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    _one_line_error(capsys, ["run", str(bad)], "is not valid YAML")
    _one_line_error(capsys, ["run"], "the following arguments are required: config")


def test_run_then_status_then_resume(tmp_path, capsys, raw_zarr):
    cfg = _config(tmp_path)
    assert main(["status", cfg]) == 0  # before the run: its stages, not started
    assert capsys.readouterr().out.split() == ["normalize", "not", "started"]
    assert main(["run", cfg, "--json", "--no-progress"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["stages"][0]["ran"] == 4 and first["volumes"]["normalized"] == str(tmp_path / "out" / "normalized")
    assert main(["status", str(tmp_path / "out"), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["stages"] == [{"stage": "normalize", "done": 4, "total": 4, "lost": 0}]
    assert main(["run", cfg, "--json", "--no-progress"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["stages"][0]["ran"] == 0 and second["stages"][0]["skipped"] == 4
    assert second["volumes"] == first["volumes"]  # a resumed run names its volumes too (it printed {} before)
    out = open_volume(first["volumes"]["normalized"])
    assert out.dtype == np.uint8 and out.meta.voxel_size == (40.0, 4.0, 4.0)
    changed = _config(tmp_path, stages=[{"stage": "normalize", "params": {"sigma": 5}}])
    _one_line_error(capsys, ["run", changed], "was started with other settings: layout (context [0, 12, 12] -> "
                                              "[0, 15, 15]), params (sigma 4.0 -> 5.0); pass --overwrite")
    assert main(["run", changed, "--overwrite", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"][0]["ran"] == 4
    # the same data under another path (another mount, a link): the refusal names both paths in full
    (tmp_path / "link").symlink_to(tmp_path / "in")
    moved = _config(tmp_path, input=str(tmp_path / "link" / "raw"), stages=[{"stage": "normalize", "params": {"sigma": 5}}])
    _one_line_error(capsys, ["run", moved], f'inputs (raw "{tmp_path}/in/raw" -> "{tmp_path}/link/raw")')


def test_ingest_npz_to_zarr_and_precomputed_blockwise(tmp_path, capsys):
    data = np.random.default_rng(3).integers(0, 255, (10, 70, 90), dtype=np.uint8)
    np.savez_compressed(tmp_path / "d.npz", raw=data)
    src = f"{tmp_path}/d.npz#raw"
    _one_line_error(capsys, ["ingest", src, str(tmp_path / "x.zarr")], "carries no voxel size")
    for dst in [str(tmp_path / "o.zarr" / "raw"), f"precomputed://file://{tmp_path}/pc"]:
        argv = ["ingest", src, dst, "--voxel-size", "30", "6", "6", "--chunk-shape", "5", "32", "32",
                "--workers", "1", "--no-progress", "--json"]
        assert main(argv) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["blocks"] == 2 * 2 * 2 and summary["ran"] == 8
        vol = open_volume(dst)
        np.testing.assert_array_equal(vol.read(vol.box), data)
        assert vol.meta.voxel_size == (30.0, 6.0, 6.0) and vol.meta.chunk_shape == (5, 32, 32)
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)["skipped"] == 8
        # (audit45) ingest into it at another voxel size kept its metadata, placing the new data wrongly: refused
        # before anything is written, and made anew with --overwrite
        other = [*argv[:4], "40", "6", "6", *argv[7:]]
        _one_line_error(capsys, other, f"{dst}: exists with voxel size [30.0, 6.0, 6.0] nm (now [40.0, 6.0, 6.0]); "
                                       "pass --overwrite to discard it and its finished blocks of stage 'copy'")
        assert main([*other, "--overwrite"]) == 0 and json.loads(capsys.readouterr().out)["ran"] == 8
        assert open_volume(dst).meta.voxel_size == (40.0, 6.0, 6.0)
        assert main(argv) == 2 and "exists with voxel size [40.0, 6.0, 6.0] nm" in capsys.readouterr().err
        assert main([*argv, "--overwrite"]) == 0 and json.loads(capsys.readouterr().out)["ran"] == 8
        # `status` takes the address that ingest printed (a precomputed:// one was not found)
        assert main(["status", dst]) == 0 and "8 / 8 blocks  complete" in capsys.readouterr().out
    _one_line_error(capsys, ["ingest", src, str(tmp_path / "o.zarr" / "raw"), "--voxel-size", "30", "6", "6",
                             "--chunk-shape", "5", "16", "16", "--block-shape", "5", "24", "24"],
                    "expected a multiple of the output chunk shape")


def test_overwrite_with_unchanged_parameters_keeps_finished_output(tmp_path, capsys, raw_zarr):
    cfg = _config(tmp_path)
    assert main(["run", cfg, "--json", "--no-progress"]) == 0
    capsys.readouterr()
    out = open_volume(str(tmp_path / "out" / "normalized"))
    before = out.read(out.box)
    assert before.any()
    assert main(["run", cfg, "--overwrite", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["stages"][0]["skipped"] == 4
    np.testing.assert_array_equal(open_volume(out.address).read(out.box), before)
