"""`connectome segment --method ffn`: blockwise equals one block, resume, bad input refused in one line."""

import json

import numpy as np
import pytest

from connectome.cli.main import main
from connectome.engine.markers import DoneMarkers, resumes
from connectome.io import create_volume, open_volume
from connectome.metrics.voi import voi

from ffn_handset import compartments_volume, saved_handset_model


def _segment(capsys, raw, out, model, block, *extra):
    argv = ["segment", raw, str(out), "--method", "ffn", "--model", model, "--block-shape", *map(str, block),
            "--workers", "2", "--no-progress", "--json", *extra]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def _read(address):
    vol = open_volume(address)
    return vol.read(vol.box)


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("ffnseg")
    generate((16, 64, 64), (8.0, 8.0, 8.0), seed=15).save(str(root), chunk_shape=(8, 32, 32))
    return root


def test_synthetic_eight_blocks_resume(synthetic_raw, tmp_path, capsys, client):
    """A trained network in 8 blocks; a stopped run redoes only its missing blocks and gives the same
    segmentation. (8 blocks vs one block with `ffn-synthetic`: benchmarks/ffn_blockwise.py, still open; with
    the hand-set network the two are equal, below.)"""
    raw = str(synthetic_raw / "raw")
    eight = _segment(capsys, raw, tmp_path / "eight", "ffn-synthetic", (8, 32, 32))
    assert eight["segmentation"] == str(tmp_path / "eight" / "segmentation")
    assert [(s["stage"], s["blocks"]) for s in eight["stages"]] == [("ffn", 8), ("ffn_reconcile", 1),
                                                                     ("ffn_relabel", 8)]
    seg8 = _read(eight["segmentation"])
    # seed 15 holds 10 cells; the network fills nearly all of it as one object (with the seed rules, since
    # 2026-12-03, all of it), so this checks little more than that every block was filled
    assert seg8.all()
    # a stopped run: forget one ffn block (its done-marker); the re-run redoes only it
    DoneMarkers(str(tmp_path / "eight"), "ffn").forget([5])
    again = _segment(capsys, raw, tmp_path / "eight", "ffn-synthetic", (8, 32, 32))
    assert again["stages"][0]["ran"] == 1 and again["stages"][0]["skipped"] == 7
    np.testing.assert_array_equal(_read(again["segmentation"]), seg8)
    # every block, the redone one too, computed in the one precision auto resolved to (models.run_precision)
    from connectome.models.inference import native_bfloat16

    recorded = [s["precision"] for s in DoneMarkers(str(tmp_path / "eight"), "ffn").summaries().values()]
    assert recorded == ["bfloat16" if native_bfloat16() else "float32"] * 8
    # auto named is the default: the run resumes with nothing to do (runs from before the option too)
    named = _segment(capsys, raw, tmp_path / "eight", "ffn-synthetic", (8, 32, 32), "--precision", "auto")
    assert named["stages"][0]["ran"] == 0 and named["stages"][0]["skipped"] == 8


def test_handset_model_blockwise_equals_one_block(tmp_path, capsys, client):
    model = saved_handset_model(tmp_path)
    address = compartments_volume(tmp_path)
    eight = _segment(capsys, address, tmp_path / "eight", model, (8, 32, 32))
    one = _segment(capsys, address, tmp_path / "one", model, (16, 64, 64))
    seg8, seg1 = _read(eight["segmentation"]), _read(one["segmentation"])
    assert len(np.unique(seg1)) == 8  # 2 x 2 x 2 compartments (walls filled from the nearest object)
    assert voi(seg8, seg1) == (0.0, 0.0)
    # the network in bfloat16, in 8 blocks, finds the same compartments
    bf16 = _segment(capsys, address, tmp_path / "bf16", model, (8, 32, 32), "--precision", "bfloat16")
    assert voi(_read(bf16["segmentation"]), seg1) == (0.0, 0.0)


def test_overwrite_in_another_block_layout_leaves_no_tables_of_the_old_blocks(tmp_path, capsys, client):
    """New output chunks discard the finished `ffn` blocks, and their overlap tables go with them: the
    reconciliation reads the new layout's only (8 old tables stayed beside the 1 new, and were read)."""
    import os

    model = saved_handset_model(tmp_path)
    address = compartments_volume(tmp_path)
    _segment(capsys, address, tmp_path / "out", model, (8, 32, 32))
    tables = tmp_path / "out" / "tables" / "ffn_overlaps"
    assert len([n for n in os.listdir(tables) if n.endswith(".npz")]) == 8
    one = _segment(capsys, address, tmp_path / "out", model, (16, 64, 64), "--overwrite")
    assert sorted(n for n in os.listdir(tables) if n.endswith(".npz")) == ["0.npz"]
    reconcile = DoneMarkers(str(tmp_path / "out"), "ffn_reconcile").summaries()
    assert [s.get("blocks") for s in reconcile.values()] in ([1], [])
    assert len(np.unique(_read(one["segmentation"]))) == 8


def test_a_block_that_spends_its_step_budget_is_reported(tmp_path, capsys, client):
    """The compartments of the test above in one block, with a budget the first object spends: the run says so
    in one warning line and in `over_budget`; the default budget changes nothing there and is left out of the
    fingerprint, a chosen one is recorded."""
    model = saved_handset_model(tmp_path)
    address = compartments_volume(tmp_path)
    options = ["--method", "ffn", "--model", model, "--block-shape", "16", "64", "64", "--workers", "1",
               "--no-progress", "--json"]
    assert main(["segment", address, str(tmp_path / "tight"), *options, "--ffn-step-budget", "0.001"]) == 0
    captured = capsys.readouterr()
    tight = json.loads(captured.out.strip().splitlines()[-1])
    spent = tight["over_budget"]
    assert list(spent) == ["0"] and spent["0"] > 0, tight
    warning = [line for line in captured.err.splitlines() if "step budget" in line]
    assert warning == [f"connectome segment: warning: ffn: 1 of 1 blocks spent their step budget (block 0: "
                       f"{spent['0']} seeds not started); the voxels no object reached took the nearest object's "
                       f"label: raise --ffn-step-budget (0: no limit)"], captured.err
    assert len(np.unique(_read(tight["segmentation"]))) < 8
    assert DoneMarkers(str(tmp_path / "tight"), "ffn").fingerprint()["params"]["step_budget"] == 0.001

    assert main(["segment", address, str(tmp_path / "default"), *options]) == 0
    captured = capsys.readouterr()
    default = json.loads(captured.out.strip().splitlines()[-1])
    assert default["over_budget"] == {} and "step budget" not in captured.err
    assert len(np.unique(_read(default["segmentation"]))) == 8
    assert "step_budget" not in DoneMarkers(str(tmp_path / "default"), "ffn").fingerprint()["params"]


def test_handset_model_with_a_mask(tmp_path, capsys, client):
    """`--mask`: masked voxels stay 0 (not filled from the nearest object) and split the compartment they cross;
    8 blocks == one block."""
    model = saved_handset_model(tmp_path)
    raw = np.full((16, 64, 64), 255, np.uint8)
    raw[:, 20, :] = 1  # dark, not blank (exactly 0 is left out: affinity.blank)
    raw[7, :, :] = 1
    mask = np.zeros(raw.shape, np.uint8)
    mask[:, :, 40:43] = 1  # a masked wall through bright voxels
    vol = create_volume(str(tmp_path / "in" / "raw"), raw.shape, np.uint8, (8, 32, 32), (8, 8, 8))
    vol.write(vol.box, raw)
    masked = create_volume(str(tmp_path / "in" / "mask"), raw.shape, np.uint8, (8, 32, 32), (8, 8, 8))
    masked.write(masked.box, mask)
    eight = _segment(capsys, vol.address, tmp_path / "eight", model, (8, 32, 32), "--mask", masked.address)
    one = _segment(capsys, vol.address, tmp_path / "one", model, (16, 64, 64), "--mask", masked.address)
    seg8, seg1 = _read(eight["segmentation"]), _read(one["segmentation"])
    assert np.all(seg1[mask != 0] == 0) and np.all(seg1[mask == 0] != 0)
    assert len(np.unique(seg1[mask == 0])) == 8  # 2 x 2 compartments, each cut in two by the wall
    assert voi(seg8, seg1) == (0.0, 0.0)
    # everything masked: no object anywhere, an all-zero segmentation (it failed in ffn_relabel, naming a stage
    # that the FFN chain does not have)
    masked.write(masked.box, np.ones(raw.shape, np.uint8))
    for name, block in (("none8", (8, 32, 32)), ("none1", (16, 64, 64))):
        empty = _segment(capsys, vol.address, tmp_path / name, model, block, "--mask", masked.address)
        assert not _read(empty["segmentation"]).any()


def test_bad_input_is_one_line(tmp_path, capsys, synthetic_raw):
    raw = str(synthetic_raw / "raw")
    sstem = tmp_path / "aniso"
    vol = create_volume(str(sstem), (8, 32, 32), np.uint8, (8, 32, 32), (40, 4, 4))
    vol.write(vol.box, np.zeros((8, 32, 32), np.uint8))
    cases = [
        (["--model", "nonesuch"], raw, "unknown FFN model 'nonesuch'"),
        (["--model", "synthetic"], raw, "is not an FFN model"),
        (["--model", "ffn-synthetic"], str(sstem), "trained on [8.0, 8.0, 8.0] nm voxels"),
        (["--model", "ffn-synthetic"], str(synthetic_raw / "labels"), "has dtype uint64, expected uint8"),
        (["--ffn-seed-margin", "-1"], raw, "argument --ffn-seed-margin: expected a whole number >= 0, found '-1'"),
        (["--ffn-step-budget", "-1"], raw, "argument --ffn-step-budget: expected a finite number >= 0, found '-1'"),
        (["--ffn-step-budget", "inf"], raw, "argument --ffn-step-budget: expected a finite number >= 0, found 'inf'"),
        (["--ffn-moves", "any"], raw, "argument --ffn-moves: invalid choice: 'any'"),
        (["--overlap", "-4", "0", "0"], raw, "argument --overlap: expected a whole number >= 0, found '-4'"),
        # (audit45: no shared voxel, so every object ended at the block faces, exit 0)
        (["--overlap", "0", "4", "4"], raw, "blocks are reconciled where they overlap: [0, 4, 4] leaves neighbouring"),
    ]
    for extra, src, expected in cases:
        argv = ["segment", src, str(tmp_path / "o"), "--method", "ffn", *extra]
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (argv, err)
    assert not (tmp_path / "o").exists()


def test_a_volume_thinner_than_the_fov_is_segmented_with_a_warning(tmp_path, capsys):
    """(audit45) A 2-d image or a few sections came back as one segment without a word."""
    thin = create_volume(str(tmp_path / "thin"), (4, 48, 48), np.uint8, (4, 48, 48), (8, 8, 8))
    thin.write(thin.box, np.random.default_rng(0).integers(0, 255, (4, 48, 48), dtype=np.uint8))
    assert main(["segment", thin.address, str(tmp_path / "o"), "--method", "ffn", "--no-progress", "--workers",
                 "1"]) == 0
    err = capsys.readouterr().err
    assert (f"connectome: warning: {thin.address} is 4 x 48 x 48 voxels, smaller than ffn-synthetic's field of "
            "view (17 x 17 x 17) along an axis") in err, err


def test_a_broken_ffn_model_is_one_line_before_anything_is_written(tmp_path, capsys, synthetic_raw):
    """Its .json given as the model, weights that are not weights or of another depth, a json cut short or
    without its voxel size: each one line, exit 2, no output (blocks failed one by one, or a traceback)."""
    import shutil

    from connectome.ffn.registry import WEIGHTS_DIR

    raw = str(synthetic_raw / "raw")
    good = WEIGHTS_DIR / "ffn-synthetic.pt"
    meta = json.loads(good.with_suffix(".json").read_text())

    def model(name, weights=None, description=None):
        path = tmp_path / f"{name}.pt"
        if weights is None:
            shutil.copy(good, path)
        else:
            path.write_bytes(weights)
        path.with_suffix(".json").write_text(description if description is not None else json.dumps(meta))
        return str(path)

    deeper = dict(meta, architecture=dict(meta["architecture"], depth=meta["architecture"]["depth"] + 2))
    cases = [
        (model("a").replace(".pt", ".json"), "expected the weights file (.pt) with its .json beside it"),
        (model("b", weights=b"garbage"), "expected the weights of the network its .json describes"),
        (model("c", description=json.dumps(deeper)), "expected the weights of the network its .json describes"),
        (model("d", description=json.dumps(meta)[:40]), "found text that is not JSON"),
        (model("e", description=json.dumps({k: v for k, v in meta.items() if k != "voxel_size"})),
         "expected key 'voxel_size'"),
    ]
    for name, expected in cases:
        argv = ["segment", raw, str(tmp_path / "o"), "--method", "ffn", "--model", name, "--no-progress"]
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], (name, err)
    assert not (tmp_path / "o").exists()


def test_precision_reaches_every_network_stage_and_auto_is_left_out_of_fingerprints(synthetic_raw, tmp_path):
    """`--precision` goes to ffn, ffn_agglomerate and (for a model reading affinities) affinities; at auto (the
    default) no fingerprint names it, so runs from before the option resume; a named precision is recorded."""
    from connectome.engine.plan import plan_run
    from connectome.ffn.segment import ffn_config

    model = saved_handset_model(tmp_path, input="affinities:synthetic")
    networks = ("affinities", "ffn", "ffn_agglomerate")

    def fingerprints(precision):
        config = ffn_config(str(synthetic_raw / "raw"), str(tmp_path / "o"), model, (8, 32, 32), agglomerate=True,
                            precision=precision)
        stages = {p.stage.name: p.stage for p in plan_run(config).stages}
        assert set(networks) <= set(stages)
        return {name: (stages[name].params.precision, stages[name].fingerprint()["params"]) for name in networks}

    for name, (precision, params) in fingerprints("auto").items():
        assert precision == "auto" and "precision" not in params, name
        # nor, at the data's voxel size, the options of a coarser model or a second one (ffn.scale)
        assert not {"scale", "consensus_model", "consensus_scale"} & set(params), (name, params)
    for name, (precision, params) in fingerprints("bfloat16").items():
        assert precision == "bfloat16" and params["precision"] == "bfloat16", name


def test_seed_rules_reach_the_canvas_and_only_the_old_behaviour_is_left_out_of_the_fingerprint(synthetic_raw,
                                                                                            tmp_path):
    """The defaults (stop at a weak seed, margin 1) are recorded, so a run from before the rules does not resume
    under them; `continue` with margin 0 (the old behaviour) is left out, so such a run resumes with them."""
    from connectome.engine.plan import plan_run
    from connectome.ffn.segment import ffn_config

    def stage(**kw):
        config = ffn_config(str(synthetic_raw / "raw"), str(tmp_path / "o"), "ffn-synthetic", (8, 32, 32), **kw)
        return next(p.stage for p in plan_run(config).stages if p.stage.name == "ffn")

    new = stage()
    assert (new.settings().weak_seed, new.settings().seed_margin) == ("stop", 1)
    assert {"weak_seed": "stop", "seed_margin": 1}.items() <= new.fingerprint()["params"].items()
    old = stage(weak_seed="continue", seed_margin=0)
    assert (old.settings().weak_seed, old.settings().seed_margin) == ("continue", 0)
    assert not {"weak_seed", "seed_margin"} & set(old.fingerprint()["params"])
    other = stage(weak_seed="reject", seed_margin=3)
    assert (other.settings().weak_seed, other.settings().seed_margin) == ("reject", 3)


def test_the_move_rule_reaches_the_canvas_and_only_the_old_rule_is_left_out_of_the_fingerprint(synthetic_raw,
                                                                                            tmp_path, capsys):
    """`connected` (the default) is recorded, so an FFN run from before the rule does not resume under it; `face`
    (the rule before) is left out, so such a run resumes with `--ffn-moves face`; the affinity method refuses the
    option."""
    from connectome.engine.plan import plan_run
    from connectome.ffn.segment import ffn_config

    def stage(**kw):
        config = ffn_config(str(synthetic_raw / "raw"), str(tmp_path / "o"), "ffn-synthetic", (8, 32, 32), **kw)
        return next(p.stage for p in plan_run(config).stages if p.stage.name == "ffn")

    new, old = stage(), stage(moves="face")
    assert new.settings().moves == "connected" and new.fingerprint()["params"]["moves"] == "connected"
    assert old.settings().moves == "face" and "moves" not in old.fingerprint()["params"]
    assert not resumes(old.fingerprint(), new.fingerprint())
    capsys.readouterr()
    assert main(["segment", str(synthetic_raw / "raw"), str(tmp_path / "a"), "--ffn-moves", "face"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("--ffn-moves face: for --method ffn, not affinities"), err
    assert not (tmp_path / "a").exists()


def test_an_unset_batch_on_a_gpu_is_recorded_as_the_one_it_resolves_to(synthetic_raw, tmp_path):
    """Until 2026-12-05 an unset `batch` meant 8 on a GPU and means 1 now: a GPU stage records the 1, so a GPU run
    started before is reported as changed instead of finishing its blocks at another batch; on CPU (always 1)
    the fingerprint is the one from before."""
    from connectome.engine.plan import plan_run
    from connectome.ffn.segment import ffn_config

    def stage(device, **kw):
        config = ffn_config(str(synthetic_raw / "raw"), str(tmp_path / "o"), "ffn-synthetic", (8, 32, 32), **kw)
        for entry in config.stages:
            if entry.stage == "ffn":
                entry.params["device"] = device
        return next(p.stage for p in plan_run(config).stages if p.stage.name == "ffn")

    cpu, gpu = stage("cpu"), stage("cuda")
    assert cpu.settings().batch == 1  # (a GPU stage's settings need a GPU: `FFNStage.settings`, `p.batch or 1`)
    assert cpu.fingerprint()["params"]["batch"] is None  # as before: CPU runs resume
    assert gpu.fingerprint()["params"]["batch"] == 1
    started_before = {**gpu.fingerprint(), "params": {**gpu.fingerprint()["params"], "batch": None}}
    assert not resumes(started_before, gpu.fingerprint())
    assert stage("cuda", batch=4).fingerprint()["params"]["batch"] == 4


def test_ffn_stages_record_their_weights_by_name_and_content(synthetic_raw, tmp_path):
    """ffn (and its consensus model) and ffn_agglomerate record each network's weights by file name and sha1, and
    a network given as a path by its file name: the same files in another folder give the same fingerprints,
    weights retrained in place another one."""
    from connectome.engine.plan import plan_run
    from connectome.ffn.segment import ffn_config

    def fingerprints(folder):
        folder.mkdir(exist_ok=True)
        model = saved_handset_model(folder)
        other = saved_handset_model(folder, deltas=(2, 2, 2), name="second")
        config = ffn_config(str(synthetic_raw / "raw"), str(tmp_path / "o"), model, (8, 32, 32), agglomerate=True,
                            consensus=True, consensus_model=other)
        stages = {p.stage.name: p.stage for p in plan_run(config).stages}
        return {name: stages[name].fingerprint() for name in ("ffn", "ffn_agglomerate")}

    a, b = fingerprints(tmp_path / "a"), fingerprints(tmp_path / "b")
    assert a == b
    assert a["ffn"]["params"]["model"] == "ffn-handset.pt" and a["ffn"]["weights"]["name"] == "ffn-handset.pt"
    assert a["ffn"]["params"]["consensus_model"] == "second.pt"
    assert a["ffn"]["consensus_weights"]["name"] == "second.pt"
    assert a["ffn"]["weights"]["sha1"] != a["ffn"]["consensus_weights"]["sha1"]
    assert a["ffn_agglomerate"]["weights"] == a["ffn"]["weights"]
    assert str(tmp_path / "a") not in json.dumps(a)
    with open(tmp_path / "b" / "second.pt", "ab") as f:  # the consensus network retrained in place
        f.write(b"\0")
    config = ffn_config(str(synthetic_raw / "raw"), str(tmp_path / "o"), str(tmp_path / "b" / "ffn-handset.pt"),
                        (8, 32, 32), consensus=True, consensus_model=str(tmp_path / "b" / "second.pt"))
    stage = next(p.stage for p in plan_run(config).stages if p.stage.name == "ffn")
    assert stage.fingerprint()["consensus_weights"]["sha1"] != a["ffn"]["consensus_weights"]["sha1"]
    assert stage.fingerprint()["weights"] == a["ffn"]["weights"]


def test_a_lost_section_is_filled_from_its_neighbours_and_segmented_through(tmp_path, capsys, client):
    """A section lost in cutting (all 0) inside the compartments: the FFN reads it as the blend of the sections
    above and below (`fill_blank`, default 2), so the compartments run through it as in the volume filled
    beforehand, in 8 blocks as in one; with `--fill-blank 0` it is masked, as before the option: left 0, and it
    cuts the compartments it crosses in two."""
    from connectome.affinity.blank import fill_blank

    model = saved_handset_model(tmp_path)
    whole = _read(compartments_volume(tmp_path))
    lost = whole.copy()
    lost[3] = 0
    addresses = {}
    for name, data in (("lost", lost), ("filled", fill_blank(lost, 2))):
        vol = create_volume(str(tmp_path / name / "raw"), data.shape, np.uint8, (8, 32, 32), (8, 8, 8))
        vol.write(vol.box, data)
        addresses[name] = vol.address
    seg = {name: _read(_segment(capsys, addresses[raw], tmp_path / name, model, block, *extra)["segmentation"])
           for name, raw, block, extra in (("eight", "lost", (8, 32, 32), []), ("one", "lost", (16, 64, 64), []),
                                           ("filled", "filled", (16, 64, 64), []),
                                           ("black", "lost", (16, 64, 64), ["--fill-blank", "0"]))}
    assert len(np.unique(seg["one"])) == 8 and seg["one"][3].all()  # 2 x 2 x 2 compartments, z 3 in them
    assert voi(seg["eight"], seg["one"]) == (0.0, 0.0) and voi(seg["filled"], seg["one"]) == (0.0, 0.0)
    np.testing.assert_array_equal(seg["filled"], seg["one"])
    assert not seg["black"][3].any()  # masked: no object there, none filled in from the nearest
    assert len(np.unique(seg["black"][seg["black"] != 0])) == 12  # the four compartments of z 0-6 cut at z 3
    # the fill is recorded where it fills, so a run from before the option resumes with --fill-blank 0
    assert DoneMarkers(str(tmp_path / "one"), "ffn").fingerprint()["params"]["fill_blank"] == 2
    assert "fill_blank" not in DoneMarkers(str(tmp_path / "black"), "ffn").fingerprint()["params"]


def test_fill_blank_reaches_every_stage_that_reads_the_image(tmp_path):
    """`segment --method ffn --fill-blank N`: the ffn stage, FFN agglomeration and, for a network that reads
    affinities, the affinities stage before it; unset, each its own default."""
    from connectome.ffn.segment import ffn_config

    address = compartments_volume(tmp_path)
    for name, input_, expected in (("ffn-raw", "raw", {"ffn", "ffn_agglomerate"}),
                                   ("ffn-aff", "affinities:synthetic", {"affinities", "ffn", "ffn_agglomerate"})):
        model = saved_handset_model(tmp_path, name=name, input=input_)
        for fill in (1, None):
            config = ffn_config(address, str(tmp_path / "out"), model, (16, 64, 64), None, None, agglomerate=True,
                                fill_blank=fill)
            given = {s.stage for s in config.stages if "fill_blank" in s.params}
            assert given == (expected if fill else set()), (name, fill, given)
            assert all(s.params["fill_blank"] == 1 for s in config.stages if "fill_blank" in s.params)
    # blank regions not looked for (--blank-band off): nothing filled, the agglomeration reads the image as stored
    config = ffn_config(address, str(tmp_path / "out"), model, (16, 64, 64), None, None, agglomerate=True,
                        blank_band="off")
    params = {s.stage: s.params for s in config.stages}
    assert params["ffn"]["find_blank"] is False and params["ffn_agglomerate"]["fill_blank"] == 0
