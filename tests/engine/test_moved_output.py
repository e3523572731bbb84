"""A moved output directory resumes (audit case B07): fingerprints and the producer hash of tables record the paths
inside the output relative to it; paths outside it (the raw input) stay in full, so moving those is a change.
Outputs whose fingerprints an earlier version recorded in full still resume in place (and are rewritten then)."""

import hashlib
import json
import os
import shutil

import pytest

from connectome.cli.main import main

BLOCK = ["--block-shape", "16", "32", "32"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("moved-synth")
    generate((16, 64, 64), (8.0, 8.0, 8.0), seed=5).save(str(root), chunk_shape=(16, 32, 32))
    return root


def _segment(capsys, raw, out, *extra) -> tuple[int, dict | None, str]:
    code = main(["segment", str(raw), str(out), *BLOCK, "--workers", "1", "--no-progress", "--json", *extra])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, json.loads(lines[-1]) if code == 0 and lines else None, captured.err


def _ran(result: dict) -> dict[str, int]:
    return {s["stage"]: s["ran"] for s in result["stages"]}


def _files(root) -> dict[str, bytes]:
    """Every stored file of a volume, by path relative to it."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _status(capsys, out) -> list[dict]:
    assert main(["status", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["stages"]


def _done(out):
    return out / ".connectome" / "done"


def test_a_moved_output_resumes_every_stage_and_a_change_is_still_refused(synth, tmp_path, capsys):
    raw, first = synth / "raw", tmp_path / "scratch" / "sm"
    code, made, err = _segment(capsys, raw, first)
    assert code == 0, err
    assert all(n > 0 for n in _ran(made).values()), made["stages"]
    segmentation = _files(first / "segmentation")
    moved = tmp_path / "project" / "sm2"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    code, again, err = _segment(capsys, raw, moved)
    assert code == 0, err
    assert set(_ran(again)) == set(_ran(made)) and not any(_ran(again).values()), again["stages"]
    assert all(s["skipped"] == s["blocks"] for s in again["stages"]), again["stages"]
    rows = _status(capsys, moved)
    assert rows and all(r["done"] == r["total"] and not r["lost"] for r in rows), rows
    assert _files(moved / "segmentation") == segmentation
    for name in os.listdir(_done(moved)):  # nothing names the directory the output was made in
        text = (_done(moved) / name / "fingerprint.json").read_text()
        assert str(first) not in text and str(moved) not in text, text
    assert str(raw) in (_done(moved) / "affinities" / "fingerprint.json").read_text()  # the input: in full

    # moved and run with another parameter: refused, naming it
    code, _, err = _segment(capsys, raw, moved, "--threshold", "0.5")
    assert code == 2 and "'merge'" in err and "threshold 0.3 -> 0.5" in err, err
    # the input moved: a change, named in full
    shutil.copytree(synth, tmp_path / "elsewhere")
    code, _, err = _segment(capsys, tmp_path / "elsewhere" / "raw", moved)
    assert code == 2 and "'affinities'" in err and "other settings: inputs" in err, err
    assert f'"{raw}" -> "{tmp_path / "elsewhere" / "raw"}"' in err, err
    assert _files(moved / "segmentation") == segmentation  # nothing was discarded


def _in_full(record: dict, base: str) -> dict:
    """A stage's fingerprint as connectome recorded it before 2026-12: the addresses inside the output in full."""
    def full(value):
        return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))

    return {k: ({n: full(v) for n, v in value.items()} if k in ("inputs", "outputs", "tables") else value)
            for k, value in record.items()}


def _as_made_before(out) -> None:
    """Rewrite an output's records as the earlier version wrote them: fingerprints with paths in full, tables and
    global steps naming their producer by the hash of that fingerprint, marker files with chunk roots in full."""
    base = str(out)
    hashes = {}  # stage -> (hash now, hash before)
    for name in os.listdir(_done(out)):
        path = _done(out) / name / "fingerprint.json"
        record = json.loads(path.read_text())
        if "step" in record:
            continue
        old = _in_full(record, base)
        path.write_text(json.dumps(old))
        hashes[name] = hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
        for marker in (_done(out) / name).glob("s-*.json"):
            m = json.loads(marker.read_text())
            if m.pop("relative_roots", False):
                m["roots"] = {k: os.path.join(base, v) for k, v in m["roots"].items()}
            marker.write_text(json.dumps(m))
    for path in [*(out / "tables").glob("*/format.json"), _done(out) / "merge" / "fingerprint.json"]:
        record = json.loads(path.read_text())
        for producer in [record.get("producer"), *(record.get("input_tables") or {}).values()]:
            if producer:
                producer["fingerprint"] = hashes[producer["stage"]]
        if "step" in record:
            record["tables"] = os.path.join(base, record["tables"])
        path.write_text(json.dumps(record))


def test_an_output_recorded_in_full_resumes_in_place_then_moves(synth, tmp_path, capsys):
    """An output made before paths were recorded relative (simulated by rewriting its records so) resumes in place
    without a stage reported as changed, is then recorded relative, and so can move; moved first, it is refused
    with a line that says what to do."""
    raw, out = synth / "raw", tmp_path / "old"
    code, made, err = _segment(capsys, raw, out)
    assert code == 0, err
    segmentation = _files(out / "segmentation")
    _as_made_before(out)
    assert str(out) in (_done(out) / "merge" / "fingerprint.json").read_text()

    early = tmp_path / "early"
    shutil.copytree(out, early)  # moved before it was run in place: the old paths cannot be told from a change
    code, _, err = _segment(capsys, raw, early)
    assert code == 2 and "other settings: outputs" in err and "run it once where it was made" in err, err

    code, again, err = _segment(capsys, raw, out)
    assert code == 0, err
    assert not any(_ran(again).values()), again["stages"]
    for name in os.listdir(_done(out)):  # rewritten relative
        assert str(out) not in (_done(out) / name / "fingerprint.json").read_text(), name
    for marker in _done(out).glob("*/s-*.json"):
        m = json.loads(marker.read_text())
        assert not m.get("roots") or m.get("relative_roots") is True, (marker, m)
    moved = tmp_path / "new"
    os.rename(out, moved)
    code, last, err = _segment(capsys, raw, moved)
    assert code == 0, err
    assert not any(_ran(last).values()), last["stages"]
    assert _files(moved / "segmentation") == segmentation
