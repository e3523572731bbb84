"""An input rewritten in place (a lab re-ingests or re-aligns its raw into the same path) is noticed: every finished
block records the size and time of the files it read from outside the output directory, and a re-run computes again
the blocks whose files changed, so the result equals a run on the new input (before, every block was skipped and
the output silently described the old input)."""

import json
import os

import numpy as np
import pytest
import yaml

from connectome.cli.main import main
from connectome.io import create_volume, open_volume

SHAPE, CHUNK = (8, 128, 128), (8, 32, 32)


@pytest.fixture(autouse=True)
def importable_tests(monkeypatch):
    """Worker processes unpickle the test stages by module name: let them import tests/."""
    from run_case import TESTS_DIR

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])))


def _config(tmp_path, raw: str, out: str) -> str:
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump({
        "input": raw, "output": str(tmp_path / out), "voxel_size": [40, 4, 4],
        "blocks": {"shape": list(CHUNK), "chunk_shape": list(CHUNK)}, "cluster": {"n_workers": 1},
        "stages": [{"stage": "normalize", "params": {"sigma": 4}}]}))
    return str(path)


def _run(capsys, cfg: str) -> tuple[dict, str]:
    assert main(["run", cfg, "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out.strip().splitlines()[-1]), captured.err


def _all(address: str) -> np.ndarray:
    volume = open_volume(address)
    return volume.read(volume.box)


def _status(capsys, out) -> dict:
    assert main(["status", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["stages"][0]


def test_a_rewritten_input_chunk_recomputes_the_blocks_that_read_it(tmp_path, capsys):
    rng = np.random.default_rng(0)
    raw = create_volume(str(tmp_path / "in" / "raw"), SHAPE, np.uint8, CHUNK, (40.0, 4.0, 4.0))
    raw.write(raw.box, rng.integers(0, 255, SHAPE, dtype=np.uint8))
    first, _ = _run(capsys, _config(tmp_path, raw.address, "out"))
    assert first["stages"][0]["ran"] == 16

    corner = raw.box.intersect(type(raw.box).of((0, 0, 0), CHUNK))
    raw.write(corner, rng.integers(0, 255, CHUNK, dtype=np.uint8))  # one chunk of the input rewritten in place
    status = _status(capsys, tmp_path / "out")
    # the blocks whose read box (write box and a 12-voxel context) touches that chunk: 2 x 2 of the 4 x 4
    assert status["lost"] == 4 and status["first_lost"]["input"] == "raw"
    assert status["first_lost"]["file"].startswith(str(tmp_path / "in" / "raw"))
    assert main(["status", str(tmp_path / "out")]) == 0
    assert "read input raw, which changed since" in capsys.readouterr().out

    again, err = _run(capsys, _config(tmp_path, raw.address, "out"))
    assert again["stages"][0]["ran"] == 4 and again["stages"][0]["skipped"] == 12
    assert "4 finished block(s) read input raw, which changed since they ran (block 0:" in err
    clean, _ = _run(capsys, _config(tmp_path, raw.address, "clean"))  # a run on the new input from scratch
    assert np.array_equal(_all(again["volumes"]["normalized"]),
                          _all(clean["volumes"]["normalized"]))
    assert _run(capsys, _config(tmp_path, raw.address, "out"))[0]["stages"][0]["ran"] == 0  # recorded anew


def test_a_rewritten_npz_input_recomputes_every_block(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "raw.npz", raw=rng.integers(0, 255, SHAPE, dtype=np.uint8))
    address = f"{tmp_path / 'raw.npz'}#raw"
    assert _run(capsys, _config(tmp_path, address, "out"))[0]["stages"][0]["ran"] == 16
    np.savez(tmp_path / "raw.npz", raw=rng.integers(0, 255, SHAPE, dtype=np.uint8))
    again, err = _run(capsys, _config(tmp_path, address, "out"))
    assert again["stages"][0]["ran"] == 16 and "read input raw, which changed since they ran" in err
    clean, _ = _run(capsys, _config(tmp_path, address, "clean"))
    assert np.array_equal(_all(again["volumes"]["normalized"]),
                          _all(clean["volumes"]["normalized"]))


def test_what_no_stage_of_the_run_writes_is_recorded_wherever_it_lies(tmp_path, capsys):
    """The raw is recorded outside the output and inside it (ingested there, as the README suggests); an earlier
    stage's output is not (its own chunk records cover it): one table per super-block, beside the marker files."""
    from connectome.engine.markers import DoneMarkers

    import stages_for_tests  # noqa: F401  (registers `renormalize`)

    raw = create_volume(str(tmp_path / "in" / "raw"), SHAPE, np.uint8, CHUNK, (40.0, 4.0, 4.0))
    raw.write(raw.box, np.random.default_rng(2).integers(0, 255, SHAPE, dtype=np.uint8))
    inside = create_volume(str(tmp_path / "inner" / "raw"), SHAPE, np.uint8, CHUNK, (40.0, 4.0, 4.0))
    inside.write(inside.box, raw.read(raw.box))
    for address, out in ((raw.address, "outer"), (inside.address, "inner")):
        _run(capsys, _chain(tmp_path, address, out))
        markers = DoneMarkers(str(tmp_path / out), "normalize")
        assert {name for table in markers.input_tables().values() for name in table} == {"raw"}, out
        assert "raw" not in markers.load().roots  # (the input tables keep their own roots)
        # the 16 blocks' 16 chunk files are listed once
        assert sum(len(files) for table in markers.input_tables().values() for files in table.values()) == 16
        assert sorted(n for n in os.listdir(markers.directory) if n.endswith(".json")) == [
            "fingerprint.json", "inputs-0.json", "s-0.json"]
        assert DoneMarkers(str(tmp_path / out), "renormalize").input_tables() == {}  # reads `normalized`
    inside.write(type(inside.box).of((0, 0, 0), CHUNK), np.zeros(CHUNK, np.uint8))  # re-ingested in place
    again, err = _run(capsys, _chain(tmp_path, inside.address, "inner"))
    assert [s["ran"] for s in again["stages"]] == [4, 9] and "read input raw, which changed" in err


def _chain(tmp_path, raw: str, out: str) -> str:
    """normalize the raw, then `renormalize` that (tests/stages_for_tests.py: a later stage with context, 6 voxels
    in y and x, that reads the first's output)."""
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump({
        "input": raw, "output": str(tmp_path / out), "voxel_size": [40, 4, 4],
        "blocks": {"shape": list(CHUNK), "chunk_shape": list(CHUNK)}, "cluster": {"n_workers": 1},
        "stages": [{"stage": "normalize", "params": {"sigma": 4}},
                   {"stage": "renormalize", "inputs": {"raw": "normalized"}}]}))
    return str(path)


def test_a_changed_input_recomputes_the_later_stages_that_read_it_even_after_a_kill(tmp_path, capsys):
    """The later stage's blocks whose read boxes overlap the rewritten blocks are forgotten when the change is found,
    before anything is computed again, so a run killed right then still recomputes them next time."""
    from connectome.engine.config import load_config
    from connectome.engine.plan import plan_run
    from connectome.engine.staleness import forget_stale

    import stages_for_tests  # noqa: F401  (registers `renormalize`)

    rng = np.random.default_rng(3)
    raw = create_volume(str(tmp_path / "in" / "raw"), SHAPE, np.uint8, CHUNK, (40.0, 4.0, 4.0))
    raw.write(raw.box, rng.integers(0, 255, SHAPE, dtype=np.uint8))
    first, _ = _run(capsys, _chain(tmp_path, raw.address, "out"))
    assert [s["ran"] for s in first["stages"]] == [16, 16]
    raw.write(type(raw.box).of((0, 0, 96), CHUNK), rng.integers(0, 255, CHUNK, dtype=np.uint8))

    cfg = _chain(tmp_path, raw.address, "out")
    forgotten = forget_stale(plan_run(load_config(cfg)))  # what a run does first, then killed before computing
    # normalize: the blocks reading x 96-127 of row 0 (x 64-127, y 0-63: 4 blocks); the second stage: those whose
    # read box (6 voxels of context) overlaps them (x 32-127, y 0-95: 9 blocks)
    assert forgotten == {"normalize": 4, "renormalize": 9}
    assert "9 finished block(s) read what an earlier stage computes again" in capsys.readouterr().err
    again, _ = _run(capsys, cfg)
    assert [s["ran"] for s in again["stages"]] == [4, 9]
    clean, _ = _run(capsys, _chain(tmp_path, raw.address, "clean"))
    for name in ("normalized", "renormalized"):
        assert np.array_equal(_all(again["volumes"][name]), _all(clean["volumes"][name])), name


def test_a_file_read_in_two_versions_marks_its_readers_until_they_run_again(tmp_path):
    """Blocks of one stage that read an input file before and after it changed (an input rewritten during the run)
    are all stale; once they are forgotten and the file's record dropped, the blocks that run again record it as it
    is now and are not stale forever."""
    from connectome.engine.markers import CHANGED, DoneMarkers, input_record
    from connectome.engine.staleness import changed_input_blocks

    source = tmp_path / "in"
    source.mkdir()
    (source / "a").write_bytes(b"first")
    markers = DoneMarkers(str(tmp_path / "out"), "stage")
    markers.claim({"stage": "stage"})  # (no block layout: a changed file's super-block counts as its readers)
    roots = {"raw": str(source)}
    writer = markers.writer("t")
    writer.add(0, None, None, None, {"raw": {"a": input_record(str(source / "a"))}}, roots)
    (source / "a").write_bytes(b"second, longer")
    writer.add(1, None, None, None, {"raw": {"a": input_record(str(source / "a"))}}, roots)
    writer.flush()
    markers.compact()
    assert markers.input_tables()[0]["raw"]["a"] == CHANGED
    stale, files = changed_input_blocks(markers)
    assert {i: name for i, (_, name) in stale.items()} == {0: "raw", 1: "raw"}
    assert files == {0: {"raw": {"a": str(source / "a")}}}
    markers.forget(stale)
    markers.drop_inputs(files)
    assert markers.input_tables() == {0: {}}
    writer = markers.writer("u")
    for i in (0, 1):  # run again, reading the file as it is now
        writer.add(i, None, None, None, {"raw": {"a": input_record(str(source / "a"))}}, roots)
    writer.flush()
    markers.compact()
    assert markers.count() == 2 and changed_input_blocks(markers) == ({}, {})


def test_a_precomputed_chunk_written_later_or_in_another_codec_is_a_change(tmp_path):
    """Precomputed chunk files are recorded by name without their compression suffix: a chunk missing when the
    block ran (background) that is ingested later as .gz, and a chunk rewritten raw where it was .gz, are changes."""
    from connectome.engine.markers import input_record

    base = tmp_path / "chunk"
    assert input_record(str(base)) == [-1, 0]
    (tmp_path / "chunk.gz").write_bytes(b"x" * 10)
    written_later = input_record(str(base))
    assert written_later[0] == 10
    (tmp_path / "chunk.gz").unlink()
    base.write_bytes(b"y" * 20)
    assert input_record(str(base))[0] == 20 != written_later[0]


def test_a_changed_input_runs_the_global_step_that_reads_it_again(tmp_path, capsys):
    """`section_normalize`'s global step measures each section's levels from the raw itself: after the raw is
    rewritten brighter, the step runs again and the result equals a run on the new raw (not new blocks on old
    levels)."""
    rng = np.random.default_rng(4)
    raw = create_volume(str(tmp_path / "in" / "raw"), SHAPE, np.uint8, CHUNK, (40.0, 4.0, 4.0))
    raw.write(raw.box, rng.integers(0, 120, SHAPE, dtype=np.uint8))

    def config(out: str) -> str:
        path = tmp_path / f"{out}.yaml"
        path.write_text(yaml.safe_dump({
            "input": raw.address, "output": str(tmp_path / out), "voxel_size": [40, 4, 4],
            "blocks": {"shape": [8, 64, 64], "chunk_shape": list(CHUNK)}, "cluster": {"n_workers": 1},
            "stages": [{"stage": "section_normalize", "params": {"tile": 32}}]}))
        return str(path)

    _run(capsys, config("out"))
    raw.write(raw.box, rng.integers(100, 255, SHAPE, dtype=np.uint8))
    again, err = _run(capsys, config("out"))
    assert "read input raw, which changed since they ran" in err
    clean, _ = _run(capsys, config("clean"))
    name = next(iter(clean["volumes"]))
    assert np.array_equal(_all(again["volumes"][name]), _all(clean["volumes"][name]))


def test_folding_keeps_a_task_file_written_meanwhile(tmp_path, monkeypatch):
    """A compaction during a run folds only the task files it read: one a worker flushes meanwhile stays."""
    from connectome.engine.markers import DoneMarkers

    markers = DoneMarkers(str(tmp_path / "out"), "stage")
    markers.claim({"stage": "stage"})
    roots = {"raw": str(tmp_path)}
    writer = markers.writer("t")
    writer.add(0, None, None, None, {"raw": {"a": [1, 1]}}, roots)
    writer.flush()
    read = markers._input_tables

    def racing():
        found = read()
        late = markers.writer("late")  # a worker's task file, written after the listing
        late.add(1, None, None, None, {"raw": {"b": [2, 2]}}, roots)
        late.flush()
        return found

    monkeypatch.setattr(markers, "_input_tables", racing)
    markers.drop_inputs({})
    monkeypatch.undo()
    assert markers.input_tables()[0]["raw"] == {"a": [1, 1], "b": [2, 2]}


def test_input_tables_keep_their_roots_when_every_block_is_forgotten(tmp_path):
    """The tables store their inputs' directories themselves: with every block of their super-block forgotten (and
    so its marker file, which named the roots, gone), an unchanged file is not taken for a changed one."""
    from connectome.engine.markers import DoneMarkers, input_record
    from connectome.engine.staleness import changed_input_blocks

    (tmp_path / "a").write_bytes(b"data")
    markers = DoneMarkers(str(tmp_path / "out"), "stage")
    markers.claim({"stage": "stage"})
    writer = markers.writer("t")
    writer.add(0, None, None, None, {"raw": {"a": input_record(str(tmp_path / "a"))}}, {"raw": str(tmp_path)})
    writer.flush()
    markers.compact()
    markers.forget([0])
    markers.mark(0, {"precision": "float32"})  # finished again, without records of its own
    assert markers.count() == 1 and changed_input_blocks(markers) == ({}, {})
