"""Label volumes carried between the raw frame and the aligned frame (`align_labels`, `unalign_labels`,
`connectome align --labels / --unalign`): a lab's ground truth is labelled on the raw sections, its segmentation is
made of the aligned ones.

The stack is a clean one distorted by known transforms (`synthetic.distort`), and so are its labels (a Voronoi
partition of the clean section, nearest neighbour): carried into the aligned frame, they must be the clean labels
at the clean position the alignment shows at each aligned pixel, apart from the pixels beside a boundary (rounding
twice, and the alignment's fraction of a pixel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from stacks import align, clean_stack, write_stack

from connectome.alignment.synthetic import Distortion, clean_positions, distort
from connectome.cluster.client import ClusterConfig
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import execute, plan_run
from connectome.io import create_volume, open_volume

pytestmark = pytest.mark.timeout(300)

BLOCK, CHUNKS = (2, 64, 64), (2, 32, 32)
BIG = np.uint64(2**63)  # ids far above 2**24 (float32) and 2**53 (float64)


def voronoi(side: int, cells: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, side, (cells, 2))
    y, x = np.mgrid[0:side, 0:side]
    d = (y[..., None] - points[:, 0]) ** 2 + (x[..., None] - points[:, 1]) ** 2
    return (np.argmin(d, axis=-1) + 1).astype(np.uint64)


def nearest(image: np.ndarray, qy: np.ndarray, qx: np.ndarray) -> np.ndarray:
    iy = np.clip(np.floor(qy + 0.5).astype(int), 0, image.shape[0] - 1)
    ix = np.clip(np.floor(qx + 0.5).astype(int), 0, image.shape[1] - 1)
    return image[iy, ix]


def big_ids(labels: np.ndarray) -> np.ndarray:
    return np.where(labels > 0, BIG + labels * np.uint64(2**41 + 12345), np.uint64(0))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, client):
    """The distorted stack aligned, its labels distorted with it, and the clean labels."""
    root = tmp_path_factory.mktemp("labels")
    d = distort(clean_stack(6, 256), 48, Distortion(max_shift=20, max_rotation=1.5), seed=5)  # 6 x 160 x 160
    clean = voronoi(256, 80, 1)
    n, h, w = d.raw.shape
    py, px = np.mgrid[0:h, 0:w].astype(np.float64)
    labels = np.stack([nearest(clean, *d.source(z, py, px)) for z in range(n)])
    raw = write_stack(str(root / "raw"), d.raw, chunks=CHUNKS)
    small = write_stack(str(root / "labels"), labels, chunks=CHUNKS)
    big = write_stack(str(root / "big"), big_ids(labels), chunks=CHUNKS)
    plan, _, t = align(raw, str(root / "out"), client, block=BLOCK, chunks=CHUNKS)
    assert np.abs(t["fields"]).max() > 5  # a real alignment, not an identity
    return {"root": root, "distorted": d, "clean": clean, "labels": labels, "raw": raw, "small": small, "big": big,
            "out": str(root / "out"), "t": t, "config": plan.config}


def carry(stack, stage: str, labels: str, name: str, client, block=BLOCK, params=None, raw=None):
    """Run `stage` on `labels` into OUT/name (a run of its own, as `connectome align --labels` runs it)."""
    output = {"align_labels": "aligned_labels", "unalign_labels": "unaligned_labels"}[stage]
    config = RunConfig(input=raw or stack["raw"], output=stack["out"], cluster=ClusterConfig(),
                       blocks=BlocksConfig(shape=block, chunk_shape=CHUNKS),
                       stages=[StageConfig(stage=stage, params=params or {}, inputs={"labels": labels},
                                           outputs={output: name})])
    plan = plan_run(config, work_dir=os.path.join(stack["out"], name), record_config=False)
    reports = execute(plan, client, progress=False)
    vol = open_volume(os.path.join(stack["out"], name))
    return vol.read(vol.box), reports[-1]


@pytest.fixture(scope="module")
def carried(stack, client):
    return carry(stack, "align_labels", stack["small"], "aligned_labels", client)[0]


def expected_aligned(stack) -> np.ndarray:
    """The clean labels at the clean position the alignment shows at each aligned pixel."""
    t, d = stack["t"], stack["distorted"]
    n, h, w = d.raw.shape
    py, px = np.mgrid[0:h, 0:w].astype(np.float64)
    nodes = (t["nodes_y"], t["nodes_x"])
    return np.stack([nearest(stack["clean"], *np.moveaxis(clean_positions(d, t["fields"], nodes, z, py, px), -1, 0))
                     for z in range(n)])


def beside_boundary(labels: np.ndarray, reach: int = 2) -> np.ndarray:
    """(z, y, x) bool: within `reach` px (in its section) of a pixel of another label."""
    from scipy.ndimage import grey_dilation, grey_erosion

    size = (1, 2 * reach + 1, 2 * reach + 1)
    return grey_dilation(labels, size=size) != grey_erosion(labels, size=size)


def test_carried_labels_are_the_labels_of_the_aligned_frame(stack, carried):
    expected = expected_aligned(stack)
    inside = carried != 0
    assert inside.mean() > 0.8
    wrong = inside & (carried != expected)
    for z in range(carried.shape[0]):
        agree = 1 - wrong[z].sum() / inside[z].sum()
        unaligned = (stack["labels"][z] == expected[z]).mean()  # the labels as they are, in the raw frame
        assert agree > 0.96, (z, agree)
        assert unaligned < 0.75, (z, unaligned)
    assert not (wrong & ~beside_boundary(expected)).any()  # every disagreement lies beside a boundary
    # 0 exactly where the aligned pixel's source lies outside its section (defects: 3)
    defects = open_volume(os.path.join(stack["out"], "defects"))
    np.testing.assert_array_equal(~inside, defects.read(defects.box) == 3)


def test_uint64_ids_far_above_float_precision_are_carried_exactly(stack, carried, client):
    big, _ = carry(stack, "align_labels", stack["big"], "aligned_big", client)
    assert big.dtype == np.uint64
    np.testing.assert_array_equal(big, big_ids(carried))
    assert set(np.unique(big)) <= set(np.unique(big_ids(stack["labels"]))) | {0}
    # through the image warp (float32) the same ids come out changed
    from connectome.alignment.warp import warp_section

    t = stack["t"]
    warped, _ = warp_section(open_volume(stack["big"]), 0, t["fields"][0].astype(np.float64),
                             (t["nodes_y"], t["nodes_x"]), (slice(0, 160), slice(0, 160)), order=0)
    assert (warped != big[0]).mean() > 0.5


def test_masks_and_signed_ids_keep_their_dtype(stack, carried, client):
    labels = stack["labels"]
    mask = write_stack(str(stack["root"] / "mask"), labels > 40, chunks=CHUNKS)
    signed = write_stack(str(stack["root"] / "signed"), -labels.astype(np.int32), chunks=CHUNKS)
    got, _ = carry(stack, "align_labels", mask, "aligned_mask", client)
    assert got.dtype == bool
    np.testing.assert_array_equal(got, carried > 40)
    got, _ = carry(stack, "align_labels", signed, "aligned_signed", client)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, -carried.astype(np.int32))


def test_blockwise_equals_one_block(stack, carried, client):
    one, report = carry(stack, "align_labels", stack["small"], "aligned_one_block", client, block=(6, 160, 160))
    assert report.blocks == 1
    np.testing.assert_array_equal(one, carried)
    back = carry(stack, "unalign_labels", os.path.join(stack["out"], "aligned_labels"), "unaligned_blocks", client)[0]
    back_one = carry(stack, "unalign_labels", os.path.join(stack["out"], "aligned_labels"), "unaligned_one_block",
                     client, block=(6, 160, 160))[0]
    np.testing.assert_array_equal(back, back_one)


def test_resumes_and_runs_again_what_was_lost(stack, carried, client):
    again, report = carry(stack, "align_labels", stack["small"], "aligned_labels", client)
    assert report.ran == 0 and report.skipped == report.blocks == 27
    chunk = os.path.join(stack["out"], "aligned_labels", "0", "c", "1", "2", "3")
    assert os.path.isfile(chunk)
    os.unlink(chunk)
    again, report = carry(stack, "align_labels", stack["small"], "aligned_labels", client)
    assert 1 <= report.ran < report.blocks
    np.testing.assert_array_equal(again, carried)


def test_aligned_labels_carried_back_are_the_raw_labels(stack, carried, client):
    back, _ = carry(stack, "unalign_labels", os.path.join(stack["out"], "aligned_labels"), "unaligned_labels", client)
    inside = back != 0
    assert inside.mean() > 0.8
    agree = (back[inside] == stack["labels"][inside]).mean()
    assert agree > 0.995, agree
    meta = json.load(open(os.path.join(stack["out"], "unaligned_labels", "zarr.json")))["attributes"]["connectome"]
    assert meta["frame"]["frame"] == "raw" and meta["frame"]["stage"] == "unalign_labels"


def test_sections_aligned_in_a_recovered_order(stack, carried, client):
    """Stored shuffled, aligned in the physical order (params.order: the stored index of each aligned section, as
    `connectome align` passes it where it recovered the order): the same aligned labels, and back in the stored
    order."""
    order = [3, 0, 5, 1, 4, 2]  # physical section k is stored at order[k]
    stored = np.empty_like(stack["labels"])
    stored[order] = stack["labels"]
    raw = np.empty_like(stack["distorted"].raw)
    raw[order] = stack["distorted"].raw
    shuffled_raw = write_stack(str(stack["root"] / "shuffled_raw"), raw, chunks=CHUNKS)
    shuffled = write_stack(str(stack["root"] / "shuffled"), stored, chunks=CHUNKS)
    got, _ = carry(stack, "align_labels", shuffled, "aligned_from_shuffled", client, params={"order": order},
                   raw=shuffled_raw)
    np.testing.assert_array_equal(got, carried)
    back, _ = carry(stack, "unalign_labels", os.path.join(stack["out"], "aligned_from_shuffled"),
                    "unaligned_shuffled", client, params={"order": order}, raw=shuffled_raw)
    inside = back != 0
    assert (back[inside] == stored[inside]).mean() > 0.995


def _connectome(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "connectome.cli.main", *args], capture_output=True, text=True,
                          timeout=240)


def _align_args(stack, out: str) -> list[str]:
    """The arguments that resume the fixture's alignment (`stacks.align`'s settings)."""
    return ["align", stack["raw"], out, "--block-shape", *map(str, BLOCK), "--chunk-shape", *map(str, CHUNKS),
            "--patch", "64", "--stride", "32", "--search", "80", "--section-order", "keep", "--workers", "1",
            "--no-progress"]


def test_command_carries_labels_and_evaluate_knows_their_frame(stack, carried, tmp_path):
    out = str(tmp_path / "out")
    shutil.copytree(stack["out"], out, ignore=shutil.ignore_patterns("aligned_*", "unaligned_*"))
    proc = _connectome(*_align_args(stack, out), "--labels", stack["small"], "--labels", stack["big"], "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["aligned_labels"] == [os.path.join(out, "aligned_labels"), os.path.join(out, "aligned_labels_2")]
    ran = {s["stage"]: s for s in summary["stages"]}
    assert ran["align"]["ran"] == 0 and ran["align_match"]["ran"] == 0  # the alignment resumed, not redone
    got = open_volume(summary["aligned_labels"][0])
    np.testing.assert_array_equal(got.read(got.box), carried)
    big = open_volume(summary["aligned_labels"][1])
    np.testing.assert_array_equal(big.read(big.box), big_ids(carried))
    again = _connectome(*_align_args(stack, out), "--labels", stack["small"], "--labels", stack["big"], "--json")
    assert again.returncode == 0, again.stderr
    assert all(s["ran"] == 0 for s in json.loads(again.stdout.strip().splitlines()[-1])["stages"])

    # a segmentation of the aligned volume (as `segment` records it), scored against either labels
    seg_dir = tmp_path / "seg"
    seg = str(seg_dir / "segmentation")
    vol = create_volume(seg, carried.shape, np.uint64, CHUNKS, (40.0, 4.0, 4.0))
    vol.write(vol.box, carried)
    from connectome.engine.run_record import record_run

    record_run(str(seg_dir), RunConfig(input=os.path.join(out, "aligned"), output=str(seg_dir),
                                       stages=[StageConfig(stage="fragments")]).model_dump(mode="json"))
    scored = _connectome("evaluate", "--seg", seg, "--gt", summary["aligned_labels"][0], "--json")
    assert scored.returncode == 0 and "warning" not in scored.stderr, scored.stderr
    assert json.loads(scored.stdout)["voi"] < 1e-9
    wrong = _connectome("evaluate", "--seg", seg, "--gt", stack["small"], "--json")
    assert wrong.returncode == 0, wrong.stderr
    lines = [line for line in wrong.stderr.splitlines() if "warning" in line]
    assert len(lines) == 1 and f"--labels {stack['small']}" in lines[0] and stack["raw"] in lines[0], wrong.stderr
    assert json.loads(wrong.stdout)["voi"] > 1  # scored all the same


@pytest.mark.parametrize("case", ["shape", "float", "unalign_shape"])
def test_bad_labels_refused_with_one_line_before_anything_runs(stack, case, tmp_path):
    path = str(tmp_path / "bad.npz")
    shape = stack["labels"].shape
    np.savez(path, shape=np.zeros((shape[0], shape[1] - 8, shape[2]), np.uint32),
             float=np.zeros(shape, np.float32))
    key = "float" if case == "float" else "shape"
    out = str(tmp_path / "out")
    option = "--unalign" if case == "unalign_shape" else "--labels"
    proc = _connectome(*_align_args(stack, out), option, f"{path}#{key}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{option} {path}#{key}" in lines[0]
    expected = {"shape": "shape [6, 152, 160], expected the raw volume's [6, 160, 160]",
                "float": "has dtype float32, expected uint8 or uint16",
                "unalign_shape": "shape [6, 152, 160]"}[case]
    assert expected in lines[0], lines[0]
    assert not os.path.exists(out)  # refused before the alignment started


def test_a_mask_not_known_to_be_in_the_raws_frame_is_warned_of(stack, client, tmp_path, capsys):
    """`segment --mask` of an aligned volume with a mask made on the unaligned sections (same shape: nothing else
    fails) says so in one line and segments all the same; the mask carried into the aligned frame, or the alignment's
    defects, are not warned of; a mask in the aligned frame given with the unaligned raw is."""
    from connectome.alignment.frames import mask_frame_warning
    from connectome.cli.main import main

    mask = (stack["labels"] == stack["labels"][0, 0, 0]).astype(np.uint8)  # one cell of the raw frame
    raw_mask = write_stack(str(tmp_path / "mask"), mask, chunks=CHUNKS)
    aligned_mask = carry(stack, "align_labels", raw_mask, "aligned_lab_mask", client)[1]
    aligned, defects = os.path.join(stack["out"], "aligned"), os.path.join(stack["out"], "defects")
    carried_mask = os.path.join(stack["out"], "aligned_lab_mask")
    assert aligned_mask.ran > 0
    assert main(["segment", aligned, str(tmp_path / "seg"), "--mask", raw_mask, "--block-shape", "6", "160", "160",
                 "--allow-voxel-mismatch", "--workers", "1", "--no-progress", "--json"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(lines) == 1 and f"--mask {raw_mask} is not known to be in that frame" in lines[0], lines
    assert f"--labels {raw_mask}" in lines[0] and defects in lines[0]
    assert mask_frame_warning("segment", aligned, carried_mask) is None
    assert mask_frame_warning("segment", aligned, defects) is None
    for raw, given in ((stack["raw"], defects), (stack["raw"], carried_mask)):
        warning = mask_frame_warning("synapses", raw, given)
        assert warning is not None and f"give the aligned volume ({aligned})" in warning, warning
    assert mask_frame_warning("synapses", stack["raw"], raw_mask) is None  # neither known aligned: nothing said
