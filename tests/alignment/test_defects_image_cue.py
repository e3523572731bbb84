"""The defect image cue off the global step's own thread: under a Dask client (the global step runs on a worker)
the sections go to the cluster in runs of neighbouring sections, each a task that reads its sections once
(`defects.image_cue`), so the step reads no section for it; the region flags are the ones the cue gives computed
in one process, one section after another (as the global step computed them before)."""

from __future__ import annotations

import numpy as np
import pytest
from stacks import align, write_stack
from test_defects_real import DEFECT, DEFECT_START, MATCH, dirt, real_stack

from connectome.alignment.defects import RUN_SECTIONS, _runs, region_flags, section_flags
from connectome.alignment.overlap import SectionImages
from connectome.alignment.solve_step import SolveSettings, SolveStep, load_matches, screen

pytestmark = pytest.mark.timeout(300)


class _Counted:
    """A volume that lists the sections read from it."""

    def __init__(self, volume):
        self.volume, self.reads = volume, []

    def read(self, box):
        self.reads.extend(range(box.offset[0], box.offset[0] + box.shape[0]))
        return self.volume.read(box)


class _Here:
    """Sections read in this process (no `address`: `image_cue` computes them here)."""

    def __init__(self, images: SectionImages):
        self.images, self.extent = images, images.extent

    def __getitem__(self, z: int) -> np.ndarray:
        return self.images[z]


def _read_here(self, z):
    raise AssertionError(f"section {z} read in the global step's process")


def test_global_step_reads_no_section_for_the_image_cue(tmp_path, client, monkeypatch):
    data = real_stack("isbi", DEFECT_START)
    data[DEFECT], _ = dirt(data[DEFECT])
    raw = write_stack(str(tmp_path / "raw"), data)
    _, _, t = align(raw, str(tmp_path / "out"), client, block=(16, 512, 512), match=MATCH)
    assert t["regions"][DEFECT].any() and not t["section_flags"].any()
    tables = str(tmp_path / "out" / "tables" / "matches")

    # the step again in this process, under the test's client: the image cue's sections are read by its tasks
    with monkeypatch.context() as m:
        m.setattr(SectionImages, "__getitem__", _read_here)
        summary = SolveStep(tables, str(tmp_path / "again" / "transforms.npz"), SolveSettings(), raw).run()
    with np.load(tmp_path / "again" / "transforms.npz") as f:
        assert np.array_equal(f["regions"], t["regions"])
    assert summary["flagged_regions"] == int(t["regions"].sum())

    # the same flags computed here, one section after another, each section read once
    s = SolveSettings()
    mt = load_matches(tables)
    fits, good, measurable, _, _ = screen(mt, s)
    flags = section_flags(*mt.stats.T, good, measurable, s.min_std, s.max_zero_fraction, s.min_good_fraction)
    images = SectionImages(raw)
    images.volume = counted = _Counted(images.volume)
    alone = region_flags(good, measurable, flags, corr=mt.corr, fits=fits, images=_Here(images), nodes=mt.nodes,
                         patch=mt.patch)
    assert np.array_equal(alone, t["regions"])
    assert counted.reads == list(range(len(data)))


def test_runs_cover_the_sections_in_order():
    jobs = list(range(1000))
    runs = _runs(jobs, threads=2)
    assert [j for r in runs for j in r] == jobs
    assert max(len(r) for r in runs) <= RUN_SECTIONS and len(runs) == -(-1000 // RUN_SECTIONS)
    assert all(r[-1] + 1 == n[0] for r, n in zip(runs, runs[1:]))  # neighbouring sections: a run reads each once
    few = _runs(list(range(5)), threads=2)
    assert [j for r in few for j in r] == list(range(5)) and len(few) == 5  # every thread gets work
    assert len(_runs(list(range(100)), threads=4)) == 16


def test_darker_areas_lined_up_long_and_thin_are_a_fold_and_round_or_wide_ones_are_not():
    """`_long_and_thin` on compared pixels (step 2; sizes below in section px): areas join where, each widened by
    `FOLD_GAP` (8 px), they touch, i.e. across gaps up to 16 px; a group is kept when its length (4 standard
    deviations) is at least 160 px, 6 times its width, and its width at most 64 px."""
    from connectome.alignment.defects import FOLD_GAP, _long_and_thin

    step = 2

    def strips(gap: int, width: int = 12, length: int = 100, shape=(400, 600)) -> np.ndarray:
        mask = np.zeros(shape, bool)  # two collinear strips, `gap` section px apart
        y0, x0 = 200 // step, 50 // step
        mask[y0:y0 + width // step, x0:x0 + length // step] = True
        x1 = x0 + (length + gap) // step
        mask[y0:y0 + width // step, x1:x1 + length // step] = True
        return mask

    assert not _long_and_thin(np.zeros((50, 50), bool), step).any()
    assert _long_and_thin(strips(2 * FOLD_GAP - 4), step).sum() == strips(2 * FOLD_GAP - 4).sum()  # one group: kept
    assert not _long_and_thin(strips(2 * FOLD_GAP + 4), step).any()  # two 100 px strips: each too short
    yy, xx = np.mgrid[0:400, 0:400]
    assert not _long_and_thin((yy - 200) ** 2 + (xx - 200) ** 2 < 60 ** 2, step).any()  # round: a dark cell
    band = np.zeros((400, 600), bool)
    band[100:150, 20:580] = True  # 100 px wide, 1120 px long: elongated, but far wider than a fold
    assert not _long_and_thin(band, step).any()
    band[100:150] = False
    band[100:110, 20:580] = True  # 20 px wide: a fold
    assert _long_and_thin(band, step).any()


def test_the_pieces_of_a_fold_between_its_gaps_are_the_fold_too():
    """A fold crossing tissue its neighbours show as dark is no darker than them there: a 200 px piece (a fold on
    its own) and, 60 px further along its line, a 100 px piece (too short alone) are both flagged (before
    2026-12-07 only the long one: a lab's fold was half flagged); a dark round cell beside the line and a short
    piece off the line's axis are not."""
    from connectome.alignment.defects import _long_and_thin

    step = 2
    mask = np.zeros((300, 400), bool)  # compared pixels: every 2nd section px
    mask[100:106, 20:120] = True  # 200 x 12 px: a fold
    mask[100:106, 150:200] = True  # 100 x 12 px, 60 px on along the same line
    alone = mask.copy()
    alone[100:106, 20:120] = False
    mask[200:210, 150:200] = True  # 100 x 20 px, parallel but 200 px off the line
    yy, xx = np.mgrid[0:300, 0:400]
    mask |= (yy - 140) ** 2 + (xx - 60) ** 2 < 12 ** 2  # a round cell 68 px from the line
    found = _long_and_thin(mask, step)
    assert found[100:106, 20:120].all() and found[100:106, 150:200].all()
    assert not found[200:210].any() and not found[125:160].any()
    assert not _long_and_thin(alone, step).any()  # the short piece alone is no fold
