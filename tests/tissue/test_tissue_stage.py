"""The `tissue` stage and command: blockwise == one block, the shipped model on an unseen volume, bad input."""

import json

import numpy as np
import pytest

from connectome.cluster.client import ClusterConfig
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import execute, plan_run
from connectome.io import create_volume, open_volume
from connectome.tissue import classes as T

VOXEL = (40.0, 5.0, 5.0)
# the shipped model measured on seed 902 (benchmarks/results/tissue.md): vessel recall 0.995, soma/nucleus
# 0.998, defect 1.000, neuropil/mitochondria/glia kept out of the mask 0.877; the bars leave a margin
VESSEL_BAR, SOMA_BAR, KEPT_BAR = 0.9, 0.9, 0.75


@pytest.fixture(scope="module")
def synth_raw(tmp_path_factory):
    from connectome.synth import Defects, generate

    root = tmp_path_factory.mktemp("tissue_stage")
    generate((4, 64, 96), VOXEL, seed=7, defects=Defects(missing=True)).save(str(root), chunk_shape=(2, 32, 32))
    return str(root / "raw")


def _run(raw, out, block, client, params=None):
    config = RunConfig(input=raw, output=str(out), blocks=BlocksConfig(shape=block, chunk_shape=(2, 32, 32)),
                       cluster=ClusterConfig(), stages=[StageConfig(stage="tissue", params=params or {})])
    plan = plan_run(config)
    execute(plan, client, progress=False)
    return len(plan.stages[-1].grid), {n: open_volume(str(out / n)) for n in ("tissue", "tissue_mask")}


def test_blockwise_equals_one_block(synth_raw, tmp_path, client):
    from connectome.tissue.model import load_model
    from connectome.tissue.predict import classify_volume

    n_small, small = _run(synth_raw, tmp_path / "blocks", (2, 32, 32), client)
    n_one, one = _run(synth_raw, tmp_path / "one", (4, 64, 96), client)
    assert (n_small, n_one) == (12, 1)
    for name in ("tissue", "tissue_mask"):
        a, b = small[name].read(small[name].box), one[name].read(one[name].box)
        assert a.dtype == b.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    codes = one["tissue"].read(one["tissue"].box)
    assert len(np.unique(codes)) >= 2  # a real classification, not one constant class
    raw = open_volume(synth_raw)
    net, info = load_model("tissue")
    np.testing.assert_array_equal(codes, classify_volume(net, info, raw.read(raw.box)))
    mask = one["tissue_mask"].read(one["tissue_mask"].box)
    excluded = [T.code_of(n) for n in T.DEFAULT_EXCLUDE]
    np.testing.assert_array_equal(mask, np.isin(codes, excluded).astype(np.uint8))


def test_shipped_model_finds_the_vessel_and_soma_of_an_unseen_volume():
    """Seed 902 is neither a training (101-108) nor the validation (901) volume."""
    import torch

    from connectome.synth import Defects, generate
    from connectome.tissue.model import load_model
    from connectome.tissue.predict import classify_volume
    from connectome.tissue.sources import synth_target

    torch.set_num_threads(1)
    v = generate((4, 512, 512), VOXEL, seed=902, defects=Defects(missing=True))
    truth = np.log2(synth_target(v.tissue, v.organelles, v.compartments)).astype(np.uint8)
    net, info = load_model("tissue")
    pred = classify_volume(net, info, v.raw)
    recall = {}
    for c in (T.VESSEL, T.SOMA, T.DEFECT):
        sel = truth == c
        assert sel.sum() > 1000, f"the volume holds no {T.NAMES[c]}"
        recall[T.NAMES[c]] = float((pred[sel] == c).mean())
    neuropil = np.isin(truth, (T.NEUROPIL, T.MITOCHONDRION, T.GLIA))
    kept = float((np.isin(pred, [T.code_of(n) for n in T.DEFAULT_EXCLUDE]) == 0)[neuropil].mean())
    assert recall["vessel"] > VESSEL_BAR and recall["soma/nucleus"] > SOMA_BAR, recall
    assert recall["defect"] > 0.95, recall
    assert kept > KEPT_BAR, kept
    net32, _ = load_model("tissue", "float32")
    assert (classify_volume(net32, info, v.raw) == pred).mean() > 0.999  # the faster precision agrees


class _Result:
    def __init__(self, returncode, out, err):
        self.returncode, self.stdout, self.stderr = returncode, out, err


@pytest.fixture
def _cli(capsys):
    """`connectome ARGS` in this process (the same entry point as the console script)."""
    from connectome.cli.main import main

    def run(*args):
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return _Result(code, out, err)

    return run


def test_unknown_model_and_wrong_dtype_are_refused_in_one_line(synth_raw, tmp_path, _cli):
    r = _cli("tissue", synth_raw, str(tmp_path / "a"), "--model", "no-such-model")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown tissue model 'no-such-model'" in r.stderr and "tissue" in r.stderr
    r = _cli("tissue", synth_raw, str(tmp_path / "a"), "--model", "synthetic")  # an affinity model
    assert r.returncode == 2 and "not a tissue model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "kind None" not in r.stderr
    r = _cli("tissue", synth_raw, str(tmp_path / "a"), "--model", "ffn-synthetic")
    assert r.returncode == 2 and "'ffn-synthetic' is not a tissue model (kind ffn)" in r.stderr
    wrong = create_volume(str(tmp_path / "u16"), (2, 64, 64), "uint16", (2, 64, 64), VOXEL)
    wrong.write(wrong.box, np.ones((2, 64, 64), np.uint16))
    r = _cli("tissue", str(tmp_path / "u16"), str(tmp_path / "b"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "dtype uint16, expected uint8" in r.stderr
    r = _cli("tissue", synth_raw, str(tmp_path / "c"), "--exclude", "vessels")
    assert r.returncode == 2 and "vessels" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    create_volume(str(tmp_path / "coarse"), (2, 64, 64), "uint8", (2, 64, 64), (40.0, 16.0, 16.0))
    r = _cli("tissue", str(tmp_path / "coarse"), str(tmp_path / "d"))
    assert r.returncode == 2 and "--allow-voxel-mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists() or not (tmp_path / "a" / "tissue").exists()


def test_command_prints_the_addresses_and_resumes(synth_raw, tmp_path, client, _cli):
    out = tmp_path / "out"
    args = ("tissue", synth_raw, str(out), "--cluster", client.scheduler.address, "--block-shape", "2", "32", "48",
            "--json", "--no-progress")
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["tissue"] == str(out / "tissue") and summary["mask"] == str(out / "tissue_mask")
    assert open_volume(summary["tissue"]).dtype == np.uint8
    again = json.loads(_cli(*args).stdout.strip().splitlines()[-1])
    assert [st["stage"] for st in again["stages"]] == ["tissue_section_stats", "tissue"]  # the levels, then blocks
    assert all(st["skipped"] == st["blocks"] > 0 for st in again["stages"])


def test_the_same_weights_from_another_folder_resume_and_replaced_weights_do_not(synth_raw, tmp_path, client):
    """The stage records its weights by file name and content (another checkout or container resumes);
    weights retrained in place make a re-run refuse to mix the two."""
    import shutil

    from connectome.core.errors import UserError
    from connectome.engine.runner import fingerprint
    from connectome.tissue.model import resolve_model_path

    shipped = resolve_model_path("tissue")
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
        for suffix in (".pt", ".json"):
            shutil.copy(shipped.with_suffix(suffix), folder / f"lab{suffix}")
    out = tmp_path / "out"
    _run(synth_raw, out, (4, 64, 96), client, {"model": str(folders[0] / "lab.pt")})
    config = RunConfig(input=synth_raw, output=str(out), blocks=BlocksConfig(shape=(4, 64, 96), chunk_shape=(2, 32, 32)),
                       cluster=ClusterConfig(),
                       stages=[StageConfig(stage="tissue", params={"model": str(folders[1] / "lab.pt")})])
    plan = plan_run(config)
    recorded = json.loads((out / ".connectome" / "done" / "tissue" / "fingerprint.json").read_text())
    assert recorded["weights"]["name"] == "lab.pt" and str(tmp_path / "a") not in json.dumps(recorded["weights"])
    assert fingerprint(plan.stages[-1].stage, plan.stages[-1].grid)["weights"] == recorded["weights"]
    *steps, reports = execute(plan, client, progress=False)  # steps: the section levels (tissue.levels)
    assert reports.skipped == reports.blocks == 1 and reports.ran == 0
    assert len(steps) == 1 and steps[0].ran == 0
    with open(folders[1] / "lab.pt", "ab") as f:  # the weights file replaced by other content
        f.write(b"\0")
    with pytest.raises(UserError, match="tissue.*other settings: weights"):
        execute(plan_run(config), client, progress=False)
