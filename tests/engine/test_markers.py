"""Done-markers on disk: a few files per stage, atomic, compacted, verified against the output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from connectome.core.errors import UserError
from connectome.core.geometry import Box
from connectome.engine.markers import SUPER, DoneMarkers, chunk_record, ranges_of
from connectome.io import create_volume


def test_ranges_of():
    assert ranges_of([5, 1, 2, 3, 9, 8]) == [[1, 4], [5, 6], [8, 10]]
    assert ranges_of([]) == []


def test_writer_compaction_and_forget_keep_summaries(tmp_path):
    markers = DoneMarkers(str(tmp_path), "s")
    markers.claim({"blocks": 3 * SUPER})
    for task, indices in (("a", range(0, 5000)), ("b", range(5000, 3 * SUPER))):
        w = markers.writer(task)
        for i in indices:
            w.add(i, {"n": i} if i % 1000 == 0 else None)
        w.flush()
    assert markers.count() == 3 * SUPER
    assert markers.task_done("a") == set(range(5000))
    markers.compact()
    names = sorted(n for n in os.listdir(markers.directory) if n != "fingerprint.json")
    assert names == ["s-0.json", "s-1.json", "s-2.json"]  # one file per super-block
    assert markers.summary(3000) == {"n": 3000} and markers.summary(3001) == {}
    markers.forget([7, 8191])
    mask = markers.done_mask(3 * SUPER)
    assert not mask[7] and not mask[8191] and mask.sum() == 3 * SUPER - 2
    assert markers.summaries()[2000] == {"n": 2000}


def test_reads_legacy_per_block_markers(tmp_path):
    markers = DoneMarkers(str(tmp_path), "old")
    os.makedirs(markers.directory)
    (tmp_path / ".connectome" / "done" / "old" / "4").write_text(json.dumps({"x": 1}))
    (tmp_path / ".connectome" / "done" / "old" / "6").write_text("")
    assert markers.done() == {4, 6} and markers.summary(4) == {"x": 1}
    markers.compact()
    assert sorted(os.listdir(markers.directory)) == ["s-0.json"] and markers.done() == {4, 6}


def test_lost_blocks_deleted_and_rewritten_chunks(tmp_path):
    vol = create_volume(str(tmp_path / "v"), (8, 32, 32), np.uint8, (8, 16, 16), (1, 1, 1))
    data = np.random.default_rng(0).integers(1, 255, (8, 32, 32), dtype=np.uint8)
    vol.write(vol.box, data)
    markers = DoneMarkers(str(tmp_path), "w")
    markers.claim({"blocks": 4})
    w = markers.writer("t")
    root = None
    for i, (y, x) in enumerate(((0, 0), (0, 16), (16, 0), (16, 16))):
        root, keys = vol.stored_chunks(Box((0, y, x), (8, 16, 16)))
        w.add(i, None, {"v": [[k, *chunk_record(os.path.join(root, k))] for k in keys]}, {"v": root})
    w.flush()
    assert markers.lost_blocks() == {}
    os.remove(os.path.join(root, "c", "0", "0", "1"))  # block 1's chunk
    path2 = os.path.join(root, "c", "0", "1", "0")
    size = os.path.getsize(path2)
    with open(path2, "wb") as f:  # garbage of the same size: a new mtime, then a checksum mismatch
        f.write(os.urandom(size))
    lost = markers.lost_blocks()
    assert sorted(lost) == [1, 2] and lost[1].endswith("c/0/0/1")
    os.utime(os.path.join(root, "c", "0", "0", "0"), ns=(1, 1))  # touched only: same bytes, still fine
    assert sorted(markers.lost_blocks()) == [1, 2]


@pytest.mark.parametrize("text", ["", "[1, 2]", "{not json"])
def test_unreadable_fingerprint_is_one_line(tmp_path, text):
    markers = DoneMarkers(str(tmp_path), "f")
    os.makedirs(markers.directory)
    (tmp_path / ".connectome" / "done" / "f" / "fingerprint.json").write_text(text)
    with pytest.raises(UserError, match="fingerprint.json: .*pass --overwrite"):
        markers.check({"a": 1})
    assert markers.claim({"a": 1}, overwrite=True)  # overwrite discards it
    assert markers.fingerprint() == {"a": 1}


def test_a_run_from_before_weights_were_recorded_resumes_and_records_them(tmp_path):
    """A fingerprint key recorded only since (`RECORDED_SINCE`) does not discard the older run's blocks; the
    fingerprint then records it, and other weights after that are a change."""
    markers = DoneMarkers(str(tmp_path), "affinities")
    old = {"stage": "affinities", "params": {"model": "sstem"}, "blocks": 2}
    markers.claim(old)
    w = markers.writer("t")
    w.add(0, None)
    w.flush()
    now = {**old, "weights": {"name": "sstem.pt", "sha1": "a" * 40}}
    assert markers.resumes(now)
    assert not markers.claim(now)  # not discarded
    assert markers.fingerprint() == now and markers.count() == 1
    other = {**old, "weights": {"name": "sstem.pt", "sha1": "b" * 40}}
    assert not markers.resumes(other)
    with pytest.raises(UserError, match="'affinities' .*other settings: weights"):
        markers.check(other)
    # any other difference is still one
    assert not markers.resumes({**now, "params": {"model": "fib-10nm"}})
    # a model given as a path: recorded by its path before, by its file name since
    pathed = DoneMarkers(str(tmp_path), "ffn")
    pathed.claim({"stage": "ffn", "params": {"model": "/lab/models/lab.pt", "consensus_model": "/lab/b.pt"}})
    named = {"stage": "ffn", "params": {"model": "lab.pt", "consensus_model": "b.pt"},
             "weights": {"name": "lab.pt", "sha1": "c" * 40}}
    assert pathed.resumes(named)
    assert not pathed.resumes({**named, "params": {"model": "other.pt", "consensus_model": "b.pt"}})


def _marked_output(work) -> tuple[DoneMarkers, str]:
    """An output `v` in `work` whose 4 blocks are marked finished, with their chunks; (markers, array dir)."""
    vol = create_volume(str(work / "v"), (8, 32, 32), np.uint8, (8, 16, 16), (1, 1, 1))
    vol.write(vol.box, np.random.default_rng(0).integers(1, 255, (8, 32, 32), dtype=np.uint8))
    markers = DoneMarkers(str(work), "w")
    markers.claim({"blocks": 4})
    w = markers.writer("t")
    root = ""
    for i, (y, x) in enumerate(((0, 0), (0, 16), (16, 0), (16, 16))):
        root, keys = vol.stored_chunks(Box((0, y, x), (8, 16, 16)))
        w.add(i, None, {"v": [[k, *chunk_record(os.path.join(root, k))] for k in keys]}, {"v": root})
    w.flush()
    return markers, root


@pytest.mark.parametrize("compacted", [False, True])
def test_a_copied_or_moved_output_checks_its_own_chunks(tmp_path, monkeypatch, compacted):
    """Chunk roots inside the work directory are recorded relative to it: a copy whose chunk was truncated
    reports that block lost (its markers checked the original's chunks and said complete), and a moved output
    reports nothing lost (every block had lost its output, under the old path)."""
    import shutil

    markers, root = _marked_output(tmp_path / "seg1")
    if compacted:
        markers.compact()
    shutil.copytree(tmp_path / "seg1", tmp_path / "segcopy")
    chunk = tmp_path / "segcopy" / os.path.relpath(root, tmp_path / "seg1") / "c" / "0" / "0" / "0"
    os.truncate(chunk, 7)
    lost = DoneMarkers(str(tmp_path / "segcopy"), "w").lost_blocks(checksum_all=True)
    assert lost == {0: str(chunk)}, lost
    monkeypatch.chdir(tmp_path)  # a work directory given relative to the current one: the file is still named in full
    assert DoneMarkers("segcopy", "w").lost_blocks(checksum_all=True) == {0: str(chunk)}
    assert DoneMarkers(str(tmp_path / "seg1"), "w").lost_blocks(checksum_all=True) == {}
    shutil.move(tmp_path / "seg1", tmp_path / "sm2")
    moved = DoneMarkers(str(tmp_path / "sm2"), "w")
    assert moved.lost_blocks() == {} and moved.count() == 4
    moved.compact(forget=[3])  # compaction keeps them relative
    shutil.move(tmp_path / "sm2", tmp_path / "sm3")
    assert DoneMarkers(str(tmp_path / "sm3"), "w").lost_blocks(checksum_all=True) == {}


def test_absolute_chunk_roots_of_older_markers_are_still_read(tmp_path):
    """Marker files from before roots were relative hold absolute roots: read as they are."""
    markers, root = _marked_output(tmp_path / "out")
    for name in os.listdir(markers.directory):
        if name.startswith("p-"):
            path = os.path.join(markers.directory, name)
            with open(path) as f:
                record = json.load(f)
            assert record["relative_roots"] is True and record["roots"] == {"v": os.path.join("v", "0")}, record
            record["roots"] = {"v": root}
            del record["relative_roots"]
            with open(path, "w") as f:
                json.dump(record, f)
    assert markers.lost_blocks() == {}
    os.remove(os.path.join(root, "c", "0", "0", "1"))
    assert markers.lost_blocks() == {1: os.path.join(root, "c", "0", "0", "1")}


def test_retried_task_in_the_same_process_keeps_the_first_attempts_blocks(tmp_path):
    """Dask retries a failed task in the same worker process: the retry skips what the first attempt finished
    and must not write its markers over the first attempt's file."""
    markers = DoneMarkers(str(tmp_path), "s")
    markers.claim({"blocks": 10})
    first = markers.writer("t")
    for i in range(4):
        first.add(i, {"n": i})
    first.flush()  # the attempt fails after block 3
    assert markers.task_done("t") == {0, 1, 2, 3}
    retry = markers.writer("t")
    for i in range(4, 10):
        retry.add(i)
    retry.flush()
    assert markers.done() == set(range(10))
    assert markers.summary(2) == {"n": 2}
