"""Image and label pyramids: blockwise equals one block, tinybrain's mean and mode, and the output
directory is a valid OME-Zarr (multiscales, image-label, labels) that napari-ome-zarr can open."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import zarr

from connectome.core.errors import UserError
from connectome.export.pyramid import level_factors

from export_runs import run_stages

SHAPE = (32, 128, 128)
CHUNK = (32, 64, 64)


@pytest.fixture(scope="module")
def pyramids(tmp_path_factory, client):
    from connectome.synth import generate

    src = tmp_path_factory.mktemp("pyramid-src")
    generate(SHAPE, (8.0, 8.0, 8.0), seed=3).save(str(src / "synth"), chunk_shape=CHUNK)
    made = {}
    for name, block in (("blocks", CHUNK), ("one", SHAPE)):
        out = tmp_path_factory.mktemp(name) / "out"
        shutil.copytree(src / "synth" / "raw", out / "raw")
        shutil.copytree(src / "synth" / "labels", out / "segmentation")
        zarr.open_group(store=str(out), mode="a")  # the output directory's group, as a run makes it
        run_stages(str(out / "raw"), str(out), ["image_pyramid", "label_pyramid"], client, block=block)
        made[name] = out
    return made


def _levels(group_dir) -> list[np.ndarray]:
    group = zarr.open_group(store=str(group_dir), mode="r")
    ome = group.attrs["ome"]
    return [np.asarray(group[d["path"]][...]) for d in ome["multiscales"][0]["datasets"]]


def test_blockwise_equals_one_block(pyramids):
    for name in ("raw", "segmentation"):
        a, b = _levels(pyramids["blocks"] / name), _levels(pyramids["one"] / name)
        assert [x.shape for x in a] == [(32, 128, 128), (16, 64, 64), (8, 32, 32)]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_mean_for_images_mode_for_labels(pyramids):
    raw = _levels(pyramids["blocks"] / "raw")
    blocks = raw[0].reshape(16, 2, 64, 2, 64, 2).astype(float).mean(axis=(1, 3, 5))
    assert np.abs(raw[1].astype(float) - blocks).max() <= 1  # the mean of each 2x2x2, rounded
    seg = _levels(pyramids["blocks"] / "segmentation")
    cubes = seg[0].reshape(16, 2, 64, 2, 64, 2).transpose(0, 2, 4, 1, 3, 5).reshape(16, 64, 64, 8)
    uniform = (cubes == cubes[..., :1]).all(-1)
    assert uniform.mean() > 0.5
    np.testing.assert_array_equal(seg[1][uniform], cubes[..., 0][uniform])  # a uniform cube keeps its label
    counts = (cubes == seg[1][..., None]).sum(-1)
    best = np.max([(cubes == cubes[..., i:i + 1]).sum(-1) for i in range(8)], axis=0)
    assert (counts == best).all()  # every coarse label is a most frequent one of its cube


def test_output_is_ome_zarr_with_image_and_labels(pyramids):
    """The checks an OME-Zarr 0.5 reader (ome-zarr-py, napari-ome-zarr) makes before it shows layers."""
    out = pyramids["blocks"]
    root = json.loads((out / "zarr.json").read_text())
    assert root["node_type"] == "group"
    assert root["attributes"]["ome"]["labels"] == ["segmentation"]
    for name in ("raw", "segmentation"):
        meta = json.loads((out / name / "zarr.json").read_text())
        ome = meta["attributes"]["ome"]
        assert ome["version"] == "0.5"
        (multiscale,) = ome["multiscales"]
        assert multiscale["name"] == name  # napari names the layer after it
        assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
        assert all(a["type"] == "space" and a["unit"] == "nanometer" for a in multiscale["axes"])
        previous = None
        for dataset in multiscale["datasets"]:
            array = json.loads((out / name / dataset["path"] / "zarr.json").read_text())
            assert array["node_type"] == "array" and len(array["shape"]) == 3
            kinds = [t["type"] for t in dataset["coordinateTransformations"]]
            assert kinds[0] == "scale" and set(kinds) <= {"scale", "translation"}
            scale = dataset["coordinateTransformations"][0]["scale"]
            assert len(scale) == 3
            if previous is not None:
                assert all(s >= p for s, p in zip(scale, previous)) and scale != previous
            previous = scale
        assert previous == [32.0, 32.0, 32.0]
    label = json.loads((out / "segmentation" / "zarr.json").read_text())["attributes"]["ome"]["image-label"]
    assert label["source"]["image"] == "../raw"
    assert os.path.isdir(os.path.normpath(out / "segmentation" / label["source"]["image"]))


def test_anisotropic_levels_halve_xy_first():
    assert level_factors((40.0, 4.0, 4.0), (16, 256, 256), (100, 4096, 4096)) == [
        (1, 2, 2), (1, 2, 2), (1, 2, 2), (2, 2, 2)]  # 40x32x32 nm, then z chunks of 8
    assert level_factors((8.0, 8.0, 8.0), (32, 64, 64), (32, 128, 128)) == [(2, 2, 2), (2, 2, 2)]
    with pytest.raises(UserError, match="levels 5"):
        level_factors((8.0, 8.0, 8.0), (32, 64, 64), (32, 128, 128), levels=5)


def test_precomputed_scales(pyramids, tmp_path, client):
    from connectome.export.pyramid import read_level
    from connectome.io import create_volume

    zarr_levels = _levels(pyramids["one"] / "segmentation")
    address = f"precomputed://file://{tmp_path / 'seg'}"
    vol = create_volume(address, SHAPE, np.uint64, CHUNK, (8.0, 8.0, 8.0))
    vol.write(vol.box, zarr_levels[0])
    zarr_levels_raw = _levels(pyramids["one"] / "raw")
    raw = create_volume(str(tmp_path / "raw"), SHAPE, np.uint8, CHUNK, (8.0, 8.0, 8.0))
    raw.write(raw.box, zarr_levels_raw[0])
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run

    config = RunConfig(input=str(tmp_path / "raw"), output=str(tmp_path / "out"), blocks=BlocksConfig(shape=CHUNK),
                       cluster=ClusterConfig(), stages=[StageConfig(stage="label_pyramid",
                                                                    inputs={"segmentation": address},
                                                                    params={"in_place": True})])
    execute(plan_run(config), client, progress=False)
    info = json.loads((tmp_path / "seg" / "info").read_text())
    assert [s["resolution"] for s in info["scales"]] == [[8, 8, 8], [16, 16, 16], [32, 32, 32]]
    for level in (1, 2):
        np.testing.assert_array_equal(read_level(address, level), zarr_levels[level])


def test_a_precomputed_volume_at_an_odd_offset_is_refused(tmp_path):
    """Precomputed counts a coarse voxel's fine voxels from 0: at voxel_offset 5 the levels were written a fine voxel
    off (cloud-volume read mip 1 shifted by 8 nm); refused in one line before anything runs (even offsets work)."""
    from connectome.engine.config import RunConfig
    from connectome.engine.plan import plan_run
    from connectome.io import create_volume

    raw = create_volume(str(tmp_path / "raw"), (32, 64, 64), np.uint8, (16, 32, 32), (8.0, 8.0, 8.0))
    for z0, refused in ((5, True), (8, False)):
        address = f"precomputed://file://{tmp_path / f'at{z0}'}"
        create_volume(address, (32, 64, 64), np.uint8, (16, 32, 32), (8.0, 8.0, 8.0), offset=(z0, 0, 0))
        config = {"input": raw.address, "output": str(tmp_path / "out"), "blocks": {"shape": [16, 64, 64]},
                  "stages": [{"stage": "image_pyramid", "inputs": {"raw": address}, "params": {"in_place": True}}]}
        if refused:
            with pytest.raises(UserError, match=r"voxel_offset \(z y x\) \[5, 0, 0\] is not a multiple of the "
                                                r"coarsest level's downsampling \[2, 2, 2\] in z"):
                plan_run(RunConfig.model_validate(config))
        else:
            assert plan_run(RunConfig.model_validate(config)).stages


def test_ome_zarr_reader_finds_image_and_labels(pyramids):
    """ome-zarr-py's reader (what napari-ome-zarr runs; installed by the `napari` extra) on the output."""
    pytest.importorskip("ome_zarr", reason="ome-zarr is installed by `pip install connectome[napari]`")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = {os.path.basename(str(n.zarr.path).rstrip("/")): n for n in Reader(parse_url(str(pyramids["blocks"])))()}
    assert {"raw", "segmentation"} <= set(nodes)
    assert [d.shape for d in nodes["segmentation"].data] == [(32, 128, 128), (16, 64, 64), (8, 32, 32)]
    assert [d.shape for d in nodes["raw"].data] == [(32, 128, 128), (16, 64, 64), (8, 32, 32)]
    assert "Label" in [type(s).__name__ for s in nodes["segmentation"].specs]


def test_a_volume_outside_the_output_directory_gets_levels_only_when_asked(tmp_path, capsys):
    """A pyramid stage adds arrays to the volume it reads: a lab's source volume outside the run's output
    directory is refused in one line (nothing written to it), unless the stage is given `in_place: true`."""
    import yaml

    from connectome.cli.main import main
    from connectome.synth import generate

    generate((16, 64, 64), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "lab"), chunk_shape=(16, 32, 32))
    before = sorted(os.listdir(tmp_path / "lab" / "raw"))
    config = {"input": str(tmp_path / "lab" / "raw"), "output": str(tmp_path / "out"),
              "blocks": {"shape": [16, 64, 64]}, "cluster": {"n_workers": 1}, "stages": [{"stage": "image_pyramid"}]}
    (tmp_path / "see.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "see.yaml")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "lies outside the output directory" in err, err
    assert "image_pyramid would write into it; give params {in_place: true}" in err
    assert sorted(os.listdir(tmp_path / "lab" / "raw")) == before and not (tmp_path / "out").exists()

    from connectome.engine.config import RunConfig
    from connectome.engine.plan import plan_run

    config["stages"] = [{"stage": "image_pyramid", "params": {"in_place": True}}]
    assert [p.stage.name for p in plan_run(RunConfig.model_validate(config)).stages] == ["image_pyramid"]
    inside = {**config, "input": str(tmp_path / "lab" / "raw"), "output": str(tmp_path / "lab"),
              "stages": [{"stage": "image_pyramid"}]}  # the output directory holding the volume: allowed
    assert plan_run(RunConfig.model_validate(inside)).stages


def test_a_block_shape_off_the_chunks_is_refused_naming_them(tmp_path):
    from connectome.engine.config import RunConfig
    from connectome.engine.plan import plan_run
    from connectome.synth import generate

    generate((16, 64, 64), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "out" / "synth"), chunk_shape=(16, 32, 32))
    raw = str(tmp_path / "out" / "synth" / "raw")
    config = {"input": raw, "output": str(tmp_path / "out"), "blocks": {"shape": [16, 48, 48], "chunk_shape": [16, 16, 16]},
              "stages": [{"stage": "image_pyramid"}]}
    with pytest.raises(UserError, match=r"needs a multiple of \[16, 32, 32\] \(the chunk shape of .*synth/raw: each "
                                        "block adds whole chunks to every level\\)"):
        plan_run(RunConfig.model_validate(config))


def test_chunks_too_thin_for_any_level_are_refused_not_passed_over(tmp_path):
    """A 24 x 128 x 128 volume in 8 x 64 x 64 chunks (8 nm): halving z would leave chunks of 4; the stage ran its
    blocks and wrote no level without a word, now it says so before anything runs."""
    from connectome.engine.config import RunConfig
    from connectome.engine.plan import plan_run
    from connectome.synth import generate

    generate((24, 128, 128), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "out" / "synth"), chunk_shape=(8, 64, 64))
    config = {"input": str(tmp_path / "out" / "synth" / "raw"), "output": str(tmp_path / "out"),
              "blocks": {"shape": [8, 64, 64]}, "stages": [{"stage": "image_pyramid"}]}
    with pytest.raises(UserError, match=r"its chunks \[8, 64, 64\] allow no level of 2x downsampling"):
        plan_run(RunConfig.model_validate(config))
    config["stages"] = [{"stage": "image_pyramid", "params": {"levels": 1}}]  # asked for: the same reason, as before
    with pytest.raises(UserError, match="allow only 0 levels"):
        plan_run(RunConfig.model_validate(config))


def test_a_pyramid_run_from_before_in_place_resumes(pyramids):
    """`in_place` (a guard) is left out of the fingerprint: the blocks of a run made before it existed, whose
    fingerprint holds `{"levels": null}` only, are the same stage (this test's runs were made now: the same)."""
    from connectome.engine.markers import DoneMarkers

    for stage in ("image_pyramid", "label_pyramid"):
        params = DoneMarkers(str(pyramids["blocks"]), stage).fingerprint()["params"]
        assert params == {"levels": None}, params


def test_a_section_range_input_links_and_shows_the_whole_volume(tmp_path, capsys):
    """A run on `raw[8:24]`: the label's OME source image and the viewer's raw layer are the whole raw volume, on
    which the segmentation lies at its offset (the source was `../../synth/raw[8:24]`, which no reader resolves, and
    `view` showed no raw layer)."""
    import yaml

    from connectome.cli.main import main
    from connectome.export.layers import find_layers
    from connectome.io import create_volume, open_volume
    from connectome.synth import generate

    generate((32, 64, 64), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "synth"), chunk_shape=(16, 32, 32))
    raw, labels = str(tmp_path / "synth" / "raw"), open_volume(str(tmp_path / "synth" / "labels"))
    seg = create_volume(str(tmp_path / "out" / "segmentation"), (16, 64, 64), np.uint64, (16, 32, 32), (8.0, 8.0, 8.0),
                        offset=(8, 0, 0))
    seg.write(seg.box, labels.read(labels.box)[8:24].astype(np.uint64))
    config = {"input": f"{raw}[8:24]", "output": str(tmp_path / "out"), "blocks": {"shape": [16, 64, 64]},
              "cluster": {"n_workers": 1}, "stages": [{"stage": "label_pyramid"}]}
    (tmp_path / "see.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "see.yaml"), "--no-progress"]) == 0, capsys.readouterr().err
    ome = json.loads((tmp_path / "out" / "segmentation" / "zarr.json").read_text())["attributes"]["ome"]
    source = os.path.normpath(os.path.join(tmp_path / "out" / "segmentation", ome["image-label"]["source"]["image"]))
    assert source == raw and os.path.isfile(os.path.join(source, "zarr.json"))
    layers = find_layers(str(tmp_path / "out"))
    assert layers.raw is not None and layers.raw.address == raw and layers.raw.offset == (0, 0, 0)
    assert layers.segmentation is not None and layers.segmentation.offset == (8, 0, 0)
