"""The viewer state of an output directory, `connectome view --state`, and the file server's answers
(gzip-stored keys, byte ranges, unstored zarr chunks, failures logged)."""

from __future__ import annotations

import gzip
import io
import json
import urllib.error
import urllib.request

import pytest

from connectome.cli.main import main
from connectome.export.layers import find_layers
from connectome.export.server import FileTree, mount_url, serve_files
from connectome.export.state import url_mapper, viewer_state


def test_state_shows_raw_segmentation_meshes_skeletons(segmented_output):
    layers = find_layers(str(segmented_output))
    state = viewer_state(layers, url_mapper(str(segmented_output), "gs://lab/run1"), shown=5)
    by_name = {layer["name"]: layer for layer in state["layers"]}
    assert by_name["raw"]["source"] == "zarr3://gs://lab/run1/synth/raw/"
    seg = by_name["segmentation"]
    assert seg["source"] == ["zarr3://gs://lab/run1/segmentation/", "precomputed://gs://lab/run1/meshes",
                             "precomputed://gs://lab/run1/skeletons", "precomputed://gs://lab/run1/segment_properties"]
    sizes = layers.segment_sizes()
    largest = sorted(sizes, key=lambda i: -sizes[i])[:5]
    assert [int(s) for s in seg["segments"]] == largest  # the five largest drawn in 3-D
    assert seg["notSelectedAlpha"] > 0  # ... and all others still coloured in the 2-D panels
    assert by_name["fragments"]["visible"] is False and by_name["affinities"]["visible"] is False
    assert state["dimensions"]["x"] == [8e-9, "m"] and state["position"] == [64.0, 64.0, 16.0]


def test_state_file_for_a_copy(segmented_output, tmp_path, capsys):
    path = tmp_path / "state.json"
    assert main(["view", str(segmented_output), "--state", str(path), "--source-url", "s3://bucket/out"]) == 0
    state = json.loads(path.read_text())
    assert state["layers"][1]["source"][0] == "zarr3://s3://bucket/out/segmentation/"
    assert capsys.readouterr().out.startswith("state: ")


@pytest.mark.parametrize("option, value", [("--port", "99999"), ("--port", "-1"), ("--source-url", "not a url"),
                                           ("--source-url", "ftp://host/out"), ("--source-url", "/local/copy")])
def test_a_bad_port_or_source_url_is_one_line(tmp_path, capsys, option, value):
    """A port beyond 65535 was replaced by a free one without a word; a --source-url that is no URL was written into
    the state as its sources."""
    argv = ["view", str(tmp_path), "--no-browser", option, value]
    if option == "--source-url":
        argv += ["--state", str(tmp_path / "s.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0] and repr(value) in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_bad_output_dir_is_one_line(tmp_path, capsys):
    assert main(["view", str(tmp_path / "missing"), "--no-browser"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
    (tmp_path / "empty").mkdir()
    assert main(["view", str(tmp_path / "empty"), "--no-browser"]) == 2
    assert "found no raw image" in capsys.readouterr().err


def _get(url, headers=None):
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request) as r:
        return r.status, dict(r.headers), r.read()


def test_file_server(tmp_path, segmented_output):
    from connectome.export.viewer import start_viewer, stop_viewer

    (tmp_path / "layer").mkdir()
    payload = bytes(range(256)) * 4
    (tmp_path / "layer" / "0-64_0-64_0-32.gz").write_bytes(gzip.compress(payload))
    (tmp_path / "layer" / "info").write_text('{"a": 1}')
    log = io.StringIO()
    tree = FileTree({"out": str(tmp_path), "seg": str(segmented_output)}, log=log)
    viewer = start_viewer({})
    try:
        base = serve_files(tree)
        assert viewer.get_viewer_url().startswith(base)  # one port: the client, the state and the files
        out = mount_url(base, "out")
        status, headers, body = _get(f"{out}/layer/0-64_0-64_0-32")
        assert status == 200 and headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == payload
        assert headers["Access-Control-Allow-Origin"] == "*"
        status, headers, body = _get(f"{out}/layer/info", {"Range": "bytes=1-3"})
        assert status == 206 and body == b'"a"' and headers["Content-Range"] == "bytes 1-3/8"
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(f"{out}/layer/%2e%2e/%2e%2e/%2e%2e/etc/passwd")
        assert e.value.code == 404
        # a zarr chunk that is not stored is all fill value: 404, which Neuroglancer reads as empty, not a failure
        with pytest.raises(urllib.error.HTTPError):
            _get(f"{mount_url(base, 'seg')}/segmentation/0/c/9/9/9")
        assert len(tree.failures) == 1 and tree.failures[0][0] == 404
        assert "request failed: 404 GET /files/out/layer/../../../etc/passwd" in log.getvalue()
        assert "/c/9/9/9" not in log.getvalue()
    finally:
        stop_viewer()


def test_synapses_are_linked_to_the_segmentation_they_were_found_with(tmp_path, capsys):
    """`connectome synapses RAW OUT --segmentation SEG`: the table records SEG (synapses.json), and `view` shows SEG as
    the segmentation when OUT has none, or beside OUT's own (another segmentation whose ids mean other cells) as
    `synapse_segmentation`, linking the synapses to it; OUT's segment properties then count no synapses."""
    import numpy as np

    from connectome.export.annotations import refresh_annotations
    from connectome.io import create_volume, open_volume
    from connectome.morphology.properties import from_tables
    from connectome.synapses.table import partners_are_ids_of, read_synapses, synapse_segmentation
    from connectome.synth import generate
    from connectome.synth.options import TissueOptions

    generate((16, 96, 96), (8.0, 8.0, 8.0), seed=11, tissue=TissueOptions(synapses_per_um3=8.0)).save(
        str(tmp_path / "synth"), chunk_shape=(16, 48, 48))
    labels, out = tmp_path / "synth" / "labels", tmp_path / "out"
    assert main(["synapses", str(tmp_path / "synth" / "raw"), str(out), "--segmentation", str(labels), "--no-types",
                 "--no-progress", "--workers", "1"]) == 0
    table = read_synapses(str(out / "synapses.csv"))
    assert len(table["id"]) > 0 and synapse_segmentation(str(out)) == str(labels)

    def state() -> dict:
        refresh_annotations(str(out), (8.0, 8.0, 8.0))  # what `view` does first
        layers = find_layers(str(out))
        url_of = url_mapper(str(out), "gs://lab/run", {str(tmp_path / "synth"): "gs://lab/synth"})
        return {layer["name"]: layer for layer in viewer_state(layers, url_of)["layers"]}

    layers = state()  # no OUT/segmentation: the synapses' own is the segmentation layer
    assert layers["segmentation"]["source"] == ["zarr3://gs://lab/synth/labels/"]
    assert set(layers["synapses"]["linkedSegmentationLayer"].values()) == {"segmentation"}

    # the output directory gets a segmentation of its own, whose ids are not the synapses' partners
    source = open_volume(str(labels))
    own = create_volume(str(out / "segmentation"), source.shape, np.uint64, (16, 48, 48), (8.0, 8.0, 8.0))
    own.write(own.box, source.read(source.box).astype(np.uint64) + 1000)
    layers = state()
    assert layers["synapse_segmentation"]["source"] == "zarr3://gs://lab/synth/labels/"
    assert set(layers["synapses"]["linkedSegmentationLayer"].values()) == {"synapse_segmentation"}
    # a state for a copy of the output directory alone leaves the outside volume out, and links the synapses to
    # nothing rather than to the output directory's segmentation
    path = tmp_path / "state.json"
    assert main(["view", str(out), "--state", str(path), "--source-url", "gs://lab/run"]) == 0
    assert "synapse_segmentation lies outside" in capsys.readouterr().err.replace(f" ({labels})", "")
    copied = {layer["name"]: layer for layer in json.loads(path.read_text())["layers"]}
    assert "synapse_segmentation" not in copied and "linkedSegmentationLayer" not in copied["synapses"]
    assert not partners_are_ids_of(str(out), str(out / "segmentation")) and partners_are_ids_of(str(out), str(labels))
    # the output directory's own segmentation is recorded relative to it: a moved copy still names its own
    import shutil

    from connectome.synapses.table import write_segmentation_record

    write_segmentation_record(str(out), str(out / "segmentation"))
    assert json.loads((out / "synapses.json").read_text()) == {"segmentation": "segmentation"}
    shutil.copytree(out, tmp_path / "moved")
    assert partners_are_ids_of(str(tmp_path / "moved"), str(tmp_path / "moved" / "segmentation"))
    assert synapse_segmentation(str(tmp_path / "moved")) == str(tmp_path / "moved" / "segmentation")
    write_segmentation_record(str(out), str(labels))
    ids = np.unique(table["post"]) + 1000
    names = [p["id"] for p in from_tables(str(out), ids, np.ones(len(ids), np.int64))["inline"]["properties"]]
    assert "synapses_in" not in names and "synapses_out" not in names


def _stale_copy(segmented_output, where) -> tuple:
    """A copy of the segmented output whose synapse annotations and segment properties are older than its
    tables (synapses.csv and segments.csv rewritten after `view` last brought them up to date)."""
    import os
    import shutil
    import time

    out = where / "out"
    shutil.copytree(segmented_output, out, ignore=shutil.ignore_patterns(".connectome"))
    assert main(["view", str(out), "--state", str(where.parent / "first.json"), "--source-url", "gs://lab/o"]) == 0
    annotations = out / "synapse_annotations" / "info"
    properties = out / "segment_properties" / "info"
    assert annotations.is_file() and properties.is_file()
    later = time.time() + 5
    for table in ("synapses.csv", "segments.csv"):
        os.utime(out / table, (later, later))
    return out, _written(annotations, properties)


def _written(*paths) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


def test_view_does_not_write_while_a_run_holds_the_output(segmented_output, tmp_path, capsys):
    """`view` brings stale annotations up to date under the output's lock: while another run holds it, nothing is
    written, one line says so, and the state is still written."""
    import socket
    import subprocess
    import sys

    import psutil

    from connectome.engine.lock import lock_path

    out, before = _stale_copy(segmented_output, tmp_path / "held")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = lock_path(str(out))
        (out / ".connectome").mkdir(exist_ok=True)
        with open(lock, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": holder.pid,
                       "started": psutil.Process(holder.pid).create_time(), "since": "now", "command": "segment"}, f)
        capsys.readouterr()
        assert main(["view", str(out), "--state", str(tmp_path / "s.json"), "--source-url", "gs://lab/o"]) == 0
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "shown as they are" in err and err.count("\n") == 1, err
        assert _written(*before) == before
        assert (tmp_path / "s.json").is_file()
    finally:
        holder.kill()
        holder.wait()
    # the run is gone: the next view brings them up to date and releases the lock
    assert main(["view", str(out), "--state", str(tmp_path / "s.json"), "--source-url", "gs://lab/o"]) == 0
    assert all(_written(p)[p][1] > before[p][1] for p in before)  # rewritten
    assert not (out / ".connectome" / "lock").exists()


def test_view_of_a_read_only_output(segmented_output, tmp_path, tmpfs, capsys):
    """A read-only output (a lab's published copy) is shown as it is, with one line, not a traceback."""
    mount_point, remount = tmpfs
    remount("size=64m")
    out, before = _stale_copy(segmented_output, mount_point)
    remount("ro")
    capsys.readouterr()
    assert main(["view", str(out), "--state", str(tmp_path / "s.json"), "--source-url", "gs://lab/o"]) == 0
    err = capsys.readouterr().err
    assert "cannot bring the synapse annotations" in err and "Traceback" not in err and err.count("\n") == 1, err
    assert _written(*before) == before
    state = json.loads((tmp_path / "s.json").read_text())
    assert "synapses" in {layer["name"] for layer in state["layers"]}


def test_meshes_of_a_labs_own_segmentation_are_shown_on_it(tmp_path, capsys):
    """(audit45) The viewer stages run on a lab's own precomputed segmentation (`inputs: {segmentation: ADDR}`):
    `view` showed raw alone, without its meshes and skeletons, since it looked for OUT/segmentation only, and
    `--source-url` failed with a traceback (IndexError). The run's segmentation input is now the segmentation
    layer, with the meshes and skeletons of OUT; a state for a copy of OUT alone, whose volumes all lie outside
    it, is refused in one line."""
    import numpy as np
    import yaml

    from connectome.io import create_volume, open_volume
    from connectome.synth import generate

    generate((16, 64, 64), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "synth"), chunk_shape=(16, 32, 32))
    labels = open_volume(str(tmp_path / "synth" / "labels"))
    seg_address = f"precomputed://file://{tmp_path}/lab_seg"
    seg = create_volume(seg_address, labels.shape, np.uint64, (16, 32, 32), (8.0, 8.0, 8.0))
    seg.write(seg.box, labels.read(labels.box).astype(np.uint64))
    out = tmp_path / "out"
    config = {"input": str(tmp_path / "synth" / "raw"), "output": str(out), "blocks": {"shape": [16, 32, 32]},
              "cluster": {"n_workers": 1},
              "stages": [{"stage": name, "inputs": {"segmentation": seg_address}}
                         for name in ("meshes", "mesh_manifests", "skeletons", "skeleton_merge")]}
    (tmp_path / "see.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "see.yaml"), "--no-progress"]) == 0, capsys.readouterr().err
    layers = find_layers(str(out))
    assert layers.segmentation is not None and layers.segmentation.address == seg_address
    url_of = url_mapper(str(out), "gs://lab/out", {str(tmp_path / "lab_seg"): "gs://lab/seg",
                                                   str(tmp_path / "synth"): "gs://lab/synth"})
    by_name = {layer["name"]: layer for layer in viewer_state(layers, url_of)["layers"]}
    assert by_name["segmentation"]["source"][:3] == ["precomputed://gs://lab/seg", "precomputed://gs://lab/out/meshes",
                                                     "precomputed://gs://lab/out/skeletons"], by_name
    capsys.readouterr()
    state = tmp_path / "state.json"
    assert main(["view", str(out), "--state", str(state), "--source-url", "https://lab.org/out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("connectome view: error: --source-url: every volume of") and "Traceback" not in "".join(err)
    assert not state.exists()


def test_meshes_of_a_dataset_of_the_output_are_shown_on_it_from_any_folder(tmp_path, capsys, monkeypatch):
    """A segmentation given by its dataset name (`inputs: {segmentation: labseg}`: OUT/labseg) was looked for in
    the current folder (review45), so `view` run elsewhere showed it as another hidden volume, without meshes."""
    import numpy as np
    import yaml

    from connectome.io import create_volume, open_volume
    from connectome.synth import generate

    generate((16, 64, 64), (8.0, 8.0, 8.0), seed=3).save(str(tmp_path / "synth"), chunk_shape=(16, 32, 32))
    labels = open_volume(str(tmp_path / "synth" / "labels"))
    out = tmp_path / "out"
    seg = create_volume(str(out / "labseg"), labels.shape, np.uint64, (16, 32, 32), (8.0, 8.0, 8.0))
    seg.write(seg.box, labels.read(labels.box).astype(np.uint64))
    config = {"input": str(tmp_path / "synth" / "raw"), "output": str(out), "blocks": {"shape": [16, 32, 32]},
              "cluster": {"n_workers": 1},
              "stages": [{"stage": name, "inputs": {"segmentation": "labseg"}} for name in ("meshes", "mesh_manifests")]}
    (tmp_path / "see.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "see.yaml"), "--no-progress"]) == 0, capsys.readouterr().err
    monkeypatch.chdir(tmp_path / "synth")
    layers = find_layers(str(out))
    assert layers.segmentation is not None and layers.segmentation.address == str(out / "labseg")
    assert "labseg" not in [layer.name for layer in layers.others] and layers.meshes == str(out / "meshes")
