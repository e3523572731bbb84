"""`connectome evaluate` says in one line when a segmentation of an aligned volume is scored against ground truth
that is not known to be in the aligned frame (`connectome.alignment.frames`), and stays silent otherwise: the run
records of the folders hold the provenance, and what cannot be read says nothing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from connectome.alignment.frames import frame_warning, record_frame, volume_frame
from connectome.cli.main import main
from connectome.engine.config import RunConfig, StageConfig
from connectome.engine.run_record import record_run
from connectome.io import create_volume

SHAPE = (2, 24, 24)


def labels(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(SHAPE, np.uint64)
    for z in range(SHAPE[0]):
        out[z] = np.kron(rng.integers(1, 6, (3, 3)), np.ones((8, 8), np.int64))
    return out


def volume(path: str, data: np.ndarray) -> str:
    vol = create_volume(path, data.shape, data.dtype, (1, 24, 24), (40.0, 4.0, 4.0))
    vol.write(vol.box, data)
    return path


def record(out: str, input: str, *stages: StageConfig) -> None:
    """A run record as `execute` writes it (run.json and runs.json)."""
    record_run(out, RunConfig(input=input, output=out, stages=list(stages)).model_dump(mode="json"))


@pytest.fixture
def lab(tmp_path):
    """An alignment output (its record and `aligned`), a segmentation made from it (its record) and ground truth
    in the raw frame: the walk-through's layout."""
    raw = volume(str(tmp_path / "lab.zarr" / "raw"), np.full(SHAPE, 100, np.uint8))
    gt = volume(str(tmp_path / "lab.zarr" / "gt"), labels(0))
    out = str(tmp_path / "lab-aligned")
    volume(os.path.join(out, "aligned"), np.full(SHAPE, 100, np.uint8))
    record(out, raw, StageConfig(stage="align_match"), StageConfig(stage="align"))
    seg_dir = str(tmp_path / "lab-seg")
    seg = volume(os.path.join(seg_dir, "segmentation"), labels(1))
    record(seg_dir, os.path.join(out, "aligned"), StageConfig(stage="affinities"), StageConfig(stage="fragments"),
           StageConfig(stage="agglomerate"))
    return {"raw": raw, "gt": gt, "out": out, "seg": seg, "seg_dir": seg_dir, "root": tmp_path}


def evaluate(capsys, seg: str, gt: str) -> tuple[int, list[str]]:
    code = main(["evaluate", "--seg", seg, "--gt", gt, "--json"])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def test_segmentation_of_the_aligned_volume_against_raw_frame_gt_warns_once(lab, capsys):
    code, lines = evaluate(capsys, lab["seg"], lab["gt"])
    assert code == 0
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 1, lines
    line = warnings[0]
    assert line.startswith("connectome evaluate: warning: seg ") and "aligned" in line
    assert f"connectome align {lab['raw']} {lab['out']} --labels {lab['gt']}" in line
    assert os.path.join(lab["out"], "aligned_labels") in line


def test_no_warning_where_the_gt_is_in_the_aligned_frame(lab, capsys):
    carried = volume(os.path.join(lab["out"], "aligned_labels"), labels(0))
    record_frame(carried, "aligned", "align_labels", lab["gt"], lab["out"])
    code, lines = evaluate(capsys, lab["seg"], carried)
    assert code == 0 and not [line for line in lines if "warning" in line], lines
    # another segmentation of the same aligned volume is in its frame too
    other_dir = str(lab["root"] / "lab-seg2")
    other = volume(os.path.join(other_dir, "segmentation"), labels(2))
    record(other_dir, os.path.join(lab["out"], "aligned"), StageConfig(stage="ffn"))
    assert frame_warning(lab["seg"], other) is None
    # but labels carried with another alignment are not
    elsewhere = str(lab["root"] / "other-aligned")
    record_frame(carried, "aligned", "align_labels", lab["gt"], elsewhere)
    assert "another alignment" in (frame_warning(lab["seg"], carried) or "")


def test_no_warning_without_readable_provenance(lab, capsys, tmp_path):
    plain = volume(str(tmp_path / "plain" / "seg"), labels(1))  # no run record beside it
    assert frame_warning(plain, lab["gt"]) is None
    with open(os.path.join(lab["seg_dir"], "run.json"), "w") as f:
        f.write("{not json")
    os.unlink(os.path.join(lab["seg_dir"], "runs.json"))
    code, lines = evaluate(capsys, lab["seg"], lab["gt"])
    assert code == 0 and not [line for line in lines if "warning" in line], lines
    npz = str(tmp_path / "seg.npz")
    np.savez(npz, seg=labels(1))
    assert frame_warning(f"{npz}#seg", lab["gt"]) is None  # not a zarr volume: unknown


def test_segmentation_of_normalized_aligned_sections_warns(lab):
    """`section_normalize` of `aligned` (the README's step 3'), segmented: the same frame as `aligned`."""
    record(lab["out"], lab["raw"], StageConfig(stage="align_match"), StageConfig(stage="align"),
           StageConfig(stage="section_normalize", inputs={"raw": "aligned"}))
    volume(os.path.join(lab["out"], "normalized_sections"), np.full(SHAPE, 100, np.uint8))
    seg_dir = str(lab["root"] / "norm-seg")
    seg = volume(os.path.join(seg_dir, "segmentation"), labels(1))
    record(seg_dir, os.path.join(lab["out"], "normalized_sections"), StageConfig(stage="fragments"))
    frame = volume_frame(seg)
    assert frame is not None and frame.frame == "aligned" and frame.alignment == lab["out"]
    assert frame.raw == lab["raw"]
    assert "--labels" in (frame_warning(seg, lab["gt"]) or "")
    # a segmentation of the raw volume is not in an aligned frame: no warning
    raw_seg_dir = str(lab["root"] / "raw-seg")
    raw_seg = volume(os.path.join(raw_seg_dir, "segmentation"), labels(1))
    record(raw_seg_dir, lab["raw"], StageConfig(stage="fragments"))
    assert frame_warning(raw_seg, lab["gt"]) is None


def test_segmentation_carried_back_against_aligned_gt_warns(lab):
    back = volume(os.path.join(lab["out"], "unaligned_labels"), labels(1))
    record_frame(back, "raw", "unalign_labels", lab["seg"], lab["out"])
    assert frame_warning(back, lab["gt"]) is None  # raw frame against raw frame
    carried = volume(os.path.join(lab["out"], "aligned_labels"), labels(0))
    record_frame(carried, "aligned", "align_labels", lab["gt"], lab["out"])
    assert "raw (unaligned) frame" in (frame_warning(back, carried) or "")


def test_a_refused_pair_stays_one_line(lab, capsys, tmp_path):
    small = volume(str(tmp_path / "small"), labels(0)[:1])
    code, lines = evaluate(capsys, lab["seg"], small)
    assert code == 2 and len(lines) == 1 and "shape mismatch" in lines[0], lines
