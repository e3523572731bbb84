"""`connectome reconstruct RAW OUT_DIR --json` end to end on a small synthetic volume: the contract's
keys and columns, every segment id the tables name exists in the segmentation, plots, a second run
that resumes every stage and a third without the neurite types (`--no-types`); `connectome synapses`
refuses a segmentation of another shape, and the 8 nm neurite types on serial sections unless they
are left out or forced."""

import csv
import json

import numpy as np
import pytest
import yaml

from connectome.cli.main import main
from connectome.io import create_volume, open_volume

SHAPE = (32, 96, 96)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from connectome.synth import generate
    from connectome.synth.options import TissueOptions

    root = tmp_path_factory.mktemp("recon")
    generate(SHAPE, (8.0, 8.0, 8.0), seed=11, tissue=TissueOptions(synapses_per_um3=8.0)).save(
        str(root / "synth"), chunk_shape=(16, 48, 48))
    return root


def _table(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, (rows[0].keys() if rows else next(csv.reader(open(path))))


def test_reconstruct_json_tables_ids_and_resume(synth, capsys):
    out = synth / "out"
    args = ["reconstruct", str(synth / "synth" / "raw"), str(out), "--block-shape", "16", "48", "48", "--json",
            "--no-progress", "--workers", "2"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("segmentation", "synapses", "graph"):
        assert key in result
    syn_rows, syn_cols = _table(result["synapses"])
    assert {"z", "y", "x", "pre", "post", "score"} <= set(syn_cols)
    edge_rows, edge_cols = _table(result["graph"])
    assert {"pre", "post", "count"} <= set(edge_cols)
    seg_v = open_volume(result["segmentation"])
    seg = seg_v.read(seg_v.box)
    present = set(int(i) for i in np.unique(seg)) - {0}
    assert len(syn_rows) > 0 and len(edge_rows) > 0  # the synthetic volume holds several synapses
    named = {int(r[k]) for r in syn_rows for k in ("pre", "post")} | {int(r[k]) for r in edge_rows for k in ("pre", "post")}
    assert named - {0} <= present
    for r in syn_rows:  # a synapse lies in the volume, on its postsynaptic segment's side of the cleft
        z, y, x = (int(r[k]) for k in ("z", "y", "x"))
        assert 0 <= z < SHAPE[0] and 0 <= y < SHAPE[1] and 0 <= x < SHAPE[2]
    assert sum(int(r["count"]) for r in edge_rows) == sum(1 for r in syn_rows if r["pre"] != "0" and r["post"] != "0")
    for key in ("degrees", "adjacency"):
        with open(result[key], "rb") as f:
            assert f.read(4) == b"\x89PNG"
    nodes, _ = _table(result["graph_nodes"])
    assert {int(n["id"]) for n in nodes} <= present

    assert main(args) == 0  # again: every stage resumes, nothing runs
    again = json.loads(capsys.readouterr().out)
    assert all(s["ran"] == 0 for s in again["stages"]), again["stages"]
    assert _table(again["synapses"])[0] == syn_rows

    # without the neurite types: the rest resumes, and the graph does not read the earlier segments.csv
    assert any(n["class"] != "unknown" for n in nodes)
    assert main([*args, "--no-types"]) == 0
    bare = json.loads(capsys.readouterr().out)
    assert "segments" not in bare and all(s["ran"] == 0 for s in bare["stages"])
    assert {s["stage"] for s in bare["stages"]}.isdisjoint({"segment_features", "neurite_types"})
    assert {n["class"] for n in _table(bare["graph_nodes"])[0]} == {"unknown"}
    assert main(["graph", str(out), "--json", "--no-plots"]) == 0  # the graph alone follows the last run
    assert {n["class"] for n in _table(json.loads(capsys.readouterr().out)["nodes"])[0]} == {"unknown"}
    assert main([*args, "--no-types", "--classifier", "types-synthetic"]) == 2
    assert "--no-types" in capsys.readouterr().err

    # with the types again (resumed), then a run of other stages into the directory (the README's see.yaml):
    # the graph still reads the types (it read run.json's last run, which had none, and lost every class)
    assert main(args) == 0
    capsys.readouterr()
    config = {"input": str(synth / "synth" / "raw"), "output": str(out), "blocks": {"shape": [16, 48, 48]},
              "cluster": {"n_workers": 1}, "stages": [{"stage": "label_pyramid"}]}
    (synth / "see.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(synth / "see.yaml"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["graph", str(out), "--json", "--no-plots"]) == 0
    classes = {n["class"] for n in _table(json.loads(capsys.readouterr().out)["nodes"])[0]}
    assert classes == {n["class"] for n in nodes} and classes != {"unknown"}

    # a graph is not written while a run holds the directory (it rewrote the tables under a running reconstruct)
    from connectome.engine.lock import output_lock

    with output_lock(str(out), "reconstruct (another run)"):
        before = (out / "graph_edges.csv").stat().st_mtime_ns
        assert main(["graph", str(out), "--no-plots"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "another run" in err and "is writing this output" in err, err
        assert (out / "graph_edges.csv").stat().st_mtime_ns == before


def test_segmentation_of_another_shape_is_one_line(synth, tmp_path, capsys):
    other = create_volume(str(tmp_path / "seg"), (32, 96, 48), np.uint64, (16, 48, 48), (8.0, 8.0, 8.0))
    code = main(["synapses", str(synth / "synth" / "raw"), str(tmp_path / "out"), "--segmentation", other.address,
                 "--block-shape", "16", "48", "48", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "[32, 96, 48]" in err and "[32, 96, 96]" in err
    assert not (tmp_path / "out" / "synapses.csv").exists()


def test_segmentation_of_another_voxel_size_is_one_line(synth, tmp_path, capsys):
    """A segmentation of the raw's shape but another voxel size (of other data, or ingested with the wrong size) is
    refused before anything is written, naming both sizes (until 2026-12-05 it was used without a word)."""
    source = open_volume(str(synth / "synth" / "labels"))
    other = create_volume(str(tmp_path / "seg"), source.shape, np.uint64, (16, 48, 48), (8.0, 8.0, 10.0))
    other.write(other.box, source.read(source.box).astype(np.uint64))
    code = main(["synapses", str(synth / "synth" / "raw"), str(tmp_path / "out"), "--segmentation", other.address,
                 "--block-shape", "16", "48", "48", "--no-types", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "[8.0, 8.0, 10.0]" in err and "[8.0, 8.0, 8.0]" in err, err
    assert not (tmp_path / "out").exists()


def test_serial_section_data_refuses_the_8nm_types_unless_left_out(tmp_path, capsys):
    """The shipped serial-section cleft model on 50 x 4.6 x 4.6 nm data: the neurite types (patch network
    and classifier of 8 nm tissue) refuse it in one line before anything is written; --no-types runs the
    synapses alone."""
    from connectome.synth import generate

    generate((8, 96, 96), (50.0, 4.6, 4.6), seed=4).save(str(tmp_path / "ss"), chunk_shape=(8, 48, 48))
    args = ["synapses", str(tmp_path / "ss" / "raw"), str(tmp_path / "out"), "--segmentation",
            str(tmp_path / "ss" / "labels"), "--model", "cleft-sstem", "--no-progress", "--workers", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "patches-synthetic" in err and "[50.0, 4.6, 4.6]" in err and "--no-types" in err
    assert not (tmp_path / "out" / "synapses.csv").exists()
    # the default cleft model (8 nm) on these sections: the refusal names the shipped one that fits them
    default = [a for a in args if a not in ("--model", "cleft-sstem")]
    assert main([*default, "--no-types", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model cleft-synthetic: trained on" in err and "cleft-sstem, shipped for" in err, err
    assert main([*args, "--no-types", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "segments" not in result and (tmp_path / "out" / "synapses.csv").is_file()
    assert not (tmp_path / "out" / "segments.csv").exists()
    # forced: the synapse stages resume, the neurite types run on the 50 nm sections
    assert main([*args, "--allow-voxel-mismatch", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ran = {s["stage"]: s["ran"] for s in result["stages"]}
    assert ran["segment_features"] > 0 and (tmp_path / "out" / "segments.csv").is_file()


def test_reconstruct_passes_min_segment_voxels_to_the_segmentation(synth, tmp_path, capsys):
    """`--min-segment-voxels` reaches reconstruct's segmentation config: a bad value is refused there, in one
    line, before anything is written."""
    raw, out = str(synth / "synth" / "raw"), tmp_path / "out"
    assert main(["reconstruct", raw, str(out), "--min-segment-voxels", "-3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--min-segment-voxels -3: expected" in err and not out.exists()


def test_reconstruct_mask_leaves_masked_voxels_out_of_segments_and_clefts(synth, tmp_path, capsys):
    """`--mask` (e.g. align's defects) reaches both chains: no segment and no synapse cleft where it is set,
    while the unmasked half keeps both."""
    raw = str(synth / "synth" / "raw")
    mask = np.zeros(SHAPE, np.uint8)
    mask[:, :, :48] = 3
    m = create_volume(str(tmp_path / "mask"), SHAPE, np.uint8, (16, 48, 48), (8.0, 8.0, 8.0))
    m.write(m.box, mask)
    out = tmp_path / "out"
    assert main(["reconstruct", raw, str(out), "--mask", m.address, "--block-shape", "32", "96", "96", "--no-types",
                 "--no-plots", "--json", "--no-progress", "--workers", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    seg, clefts = open_volume(result["segmentation"]), open_volume(str(out / "cleft_fragments"))
    seg, clefts = seg.read(seg.box), clefts.read(clefts.box)
    assert seg[mask != 0].max() == 0 and seg[mask == 0].max() > 0
    assert clefts[mask != 0].max() == 0 and clefts[mask == 0].max() > 0  # (120 masked voxels without the mask)
    rows, _ = _table(result["synapses"])
    assert rows and all(int(r["x"]) >= 48 for r in rows)


def test_synapses_into_a_segment_output_keep_the_segmentations_record(synth, tmp_path, capsys):
    """`synapses` into a `segment` output replaced OUT/run.json, the segmentation's only record (its stages and
    parameters, to copy into a config). run.json stays the last run's (`graph` reads it); OUT/runs.json keeps the last
    record of each kind of run, a record replaced by a run of all its stages. Neither is read to resume."""
    raw, out = str(synth / "synth" / "raw"), tmp_path / "out"
    blocks = ["--block-shape", "32", "96", "96", "--workers", "1", "--no-progress", "--json"]
    segment = ["segment", raw, str(out), "--model", "synthetic", *blocks]
    synapses = ["synapses", raw, str(out), "--segmentation", str(out / "segmentation"), *blocks]

    def names(record):
        return [s["stage"] for s in record["stages"]]

    def records():
        kept = json.loads((out / "runs.json").read_text())["runs"]
        return names(json.loads((out / "run.json").read_text())), [names(r) for r in kept], kept

    chain = ["affinities", "fragments", "agglomerate", "relabel"]
    synapse_chain = ["clefts", "cleft_fragments", "synapses", "segment_features", "neurite_types"]
    assert main(segment) == 0 and main(synapses) == 0
    capsys.readouterr()
    last, kept_names, kept = records()
    assert last == synapse_chain and kept_names == [chain, synapse_chain]
    assert kept[0]["stages"][0]["params"]["model"] == "synthetic" and kept[0]["input"] == raw
    config = tmp_path / "segmentation.json"  # the kept record is a config: the segmentation, resumed
    config.write_text(json.dumps(kept[0]))
    assert main(["run", str(config), "--no-progress", "--json"]) == 0
    assert all(s["ran"] == 0 for s in json.loads(capsys.readouterr().out)["stages"])
    assert records()[:2] == (chain, [synapse_chain, chain])

    assert main(segment) == 0  # segment resumes, and the synapses' record stays
    assert all(s["ran"] == 0 for s in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["stages"])
    assert records()[:2] == (chain, [synapse_chain, chain])
    assert main(["reconstruct", raw, str(out), *blocks]) == 0  # all their stages: one record
    capsys.readouterr()
    assert records()[:2] == (chain + synapse_chain, [chain + synapse_chain])


def test_the_default_cleft_model_is_said_once_after_the_run(synth, tmp_path, capsys):
    """`synapses` without --model found clefts with cleft-synthetic (synthetic training only) without a word on a
    lab's real data; it says so in one note after the run, and not where the model is named."""
    args = ["synapses", str(synth / "synth" / "raw"), str(tmp_path / "out"), "--segmentation",
            str(synth / "synth" / "labels"), "--block-shape", "16", "48", "48", "--no-types", "--no-progress",
            "--workers", "1", "--json"]
    assert main(args) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "cleft model" in line]
    assert len(notes) == 1 and "no cleft model given: cleft-synthetic" in notes[0] and "cleft-fib" in notes[0]
    assert "--model cleft-fib" in notes[0]
    assert main([*args, "--model", "cleft-synthetic"]) == 0  # named: resumes, no note
    assert "cleft model" not in capsys.readouterr().err
