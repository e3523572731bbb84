"""`--mask-values`: a mask (e.g. `align`'s defects) that excludes by some of its codes only (`mask_values` stage)."""

import json

import numpy as np
import pytest

from connectome.alignment.footprints import SELECTED_MASK
from connectome.cli.main import main
from connectome.io import create_volume, open_volume


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """A synthetic volume and a mask coded as `align`'s defects: 1 on a flagged section, 2 and 3 on regions."""
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("mask_values")
    generate((16, 96, 96), (8.0, 8.0, 8.0), seed=5).save(str(root / "syn"), chunk_shape=(16, 96, 96))
    raw = open_volume(str(root / "syn" / "raw"))
    codes = np.zeros(raw.shape, np.uint8)
    codes[6] = 1
    codes[:, 10:40, 10:40] = 2
    codes[11, 50:80, 50:80] = 3
    paths = {}
    for name, values in (("codes", codes), ("two_three", (codes >= 2).astype(np.uint8))):
        vol = create_volume(str(root / name), raw.shape, np.uint8, raw.shape, raw.meta.voxel_size)
        vol.write(vol.box, values)
        paths[name] = vol.address
    return raw.address, paths, codes


def _segment(capsys, raw, out, *extra):
    code = main(["segment", raw, str(out), "--model", "synthetic", "--block-shape", "16", "96", "96", "--workers", "1",
                 "--no-progress", "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    seg = open_volume(json.loads(captured.out.strip().splitlines()[-1])["segmentation"])
    return seg.read(seg.box)


def test_only_the_given_codes_are_left_out(coded, tmp_path, capsys):
    raw, masks, codes = coded
    picked = _segment(capsys, raw, tmp_path / "picked", "--mask", masks["codes"], "--mask-values", "3", "2")
    same = _segment(capsys, raw, tmp_path / "same", "--mask", masks["two_three"])
    every = _segment(capsys, raw, tmp_path / "every", "--mask", masks["codes"])
    np.testing.assert_array_equal(picked, same)  # as a mask of those codes alone
    selected = open_volume(str(tmp_path / "picked" / SELECTED_MASK))
    np.testing.assert_array_equal(selected.read(selected.box), (codes >= 2).astype(np.uint8))
    assert not picked[codes >= 2].any() and np.count_nonzero(picked[6]) > 0.8 * picked[6].size  # the section is kept
    assert not every[6].any()  # where every code excludes, the flagged section is a wall


def test_the_stage_in_blocks_picks_the_codes(coded, tmp_path, client):
    """18 blocks, against the codes picked in numpy (so blockwise equals one block)."""
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run

    raw, masks, codes = coded
    config = RunConfig(input=raw, output=str(tmp_path / "out"), cluster=ClusterConfig(),
                       blocks=BlocksConfig(shape=(8, 32, 32), chunk_shape=(8, 32, 32)),
                       stages=[StageConfig(stage="mask_values", inputs={"mask": masks["codes"]},
                                           params={"values": [1, 3]})])
    plan = plan_run(config)
    assert len(plan.stages[-1].grid) == 18
    execute(plan, client, progress=False)
    out = open_volume(str(tmp_path / "out" / SELECTED_MASK))
    np.testing.assert_array_equal(out.read(out.box), np.isin(codes, [1, 3]).astype(np.uint8))


@pytest.mark.parametrize("command", ["segment", "reconstruct", "synapses"])
@pytest.mark.parametrize("values,found", [(["2"], "no --mask"), (["0"], "0"), (["2", "256"], "256")])
def test_bad_mask_values_are_refused_in_one_line(coded, tmp_path, capsys, command, values, found):
    raw, masks, _ = coded
    mask = [] if found == "no --mask" else ["--mask", masks["codes"]]
    seg = ["--segmentation", raw] if command == "synapses" else []
    code = main([command, raw, str(tmp_path / "out"), *seg, *mask, "--mask-values", *values, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--mask-values" in err and found in err, err
    assert not (tmp_path / "out").exists()


def test_every_chain_reads_the_selected_mask(coded, tmp_path):
    """The FFN and the cleft chain (synapses, reconstruct) read the `mask_values` stage's output, once made."""
    from connectome.ffn.segment import ffn_config
    from connectome.synapses.chain import synapse_stages

    raw, masks, _ = coded
    ffn = ffn_config(raw, str(tmp_path / "ffn"), "ffn-synthetic", (16, 96, 96), mask=masks["codes"],
                     mask_values=[2, 3])
    names = [s.stage for s in ffn.stages]
    assert names.index("mask_values") < names.index("ffn")
    assert next(s for s in ffn.stages if s.stage == "ffn").inputs["mask"] == SELECTED_MASK
    clefts = synapse_stages(mask=masks["codes"], mask_values=[2, 3])
    assert clefts[0].stage == "mask_values" and clefts[0].params == {"values": [2, 3]}
    assert next(s for s in clefts if s.stage == "cleft_fragments").inputs["mask"] == SELECTED_MASK
