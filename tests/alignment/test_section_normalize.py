"""Per-section normalisation: brightness and contrast drift between sections removed, blockwise
equal to one block (no seams)."""

from __future__ import annotations

import numpy as np
import pytest
from stacks import clean_stack, write_stack

from connectome.cluster.client import ClusterConfig
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import execute, plan_run
from connectome.io import open_volume

pytestmark = pytest.mark.timeout(240)


def _run(raw, out, block, client, params):
    config = RunConfig(input=raw, output=out, blocks=BlocksConfig(shape=block, chunk_shape=(2, 32, 32)),
                       cluster=ClusterConfig(), stages=[StageConfig(stage="section_normalize", params=params)])
    plan = plan_run(config)
    execute(plan, client, progress=False)
    vol = open_volume(f"{out}/normalized_sections")
    return plan, vol.read(vol.box)


@pytest.mark.parametrize("clip_limit", [0.0, 0.02])
def test_section_normalize_blockwise_and_drift(clip_limit, tmp_path, client):
    base = clean_stack(4, 160, noise=0.0).astype(np.float64)  # one image, four brightness settings
    gain = np.array([1.0, 0.5, 0.7, 0.35])[:, None, None]
    offset = np.array([0.0, 60.0, -20.0, 100.0])[:, None, None]
    drifted = np.clip(base * gain + offset, 0, 255).astype(np.uint8)
    raw = write_stack(str(tmp_path / "raw"), drifted, chunks=(2, 32, 32))
    params = {"tile": 32, "clip_limit": clip_limit, "low": 1.0, "high": 99.0}
    plan, blocks = _run(raw, str(tmp_path / "blocks"), (2, 64, 64), client, params)
    assert len(plan.stages[0].grid) == 18
    _, one = _run(raw, str(tmp_path / "one"), (4, 160, 160), client, params)
    np.testing.assert_array_equal(blocks, one)
    means = blocks.reshape(4, -1).mean(axis=1)
    stds = blocks.reshape(4, -1).std(axis=1)
    raw_means = drifted.reshape(4, -1).mean(axis=1)
    assert np.ptp(raw_means) > 40  # the drift was real
    assert np.ptp(means) < np.ptp(raw_means) / 4  # and is gone
    if clip_limit == 0:  # the stretch alone is linear: sections agree with each other pixel by pixel
        assert np.ptp(stds) < np.ptp(drifted.reshape(4, -1).std(axis=1)) / 4
        assert np.abs(blocks.astype(int) - blocks[0]).mean() < 3


def test_zero_margins_do_not_set_a_sections_levels(tmp_path, client):
    """Sections with the zero margins an alignment leaves (of different widths): each section's levels come from
    its image, so the normalised sections agree inside as they do without margins (a margin set the low level
    to 0, and a dark section stayed dark)."""
    base = clean_stack(4, 160, noise=0.0).astype(np.float64)
    gain = np.array([1.0, 0.5, 0.7, 0.2])[:, None, None]
    offset = np.array([0.0, 60.0, 20.0, 40.0])[:, None, None]
    drifted = np.clip(base * gain + offset, 1, 255).astype(np.uint8)  # no pixel of the image is 0
    for z, width in enumerate([0, 6, 12, 9]):
        drifted[z, :, :width] = 0
        drifted[z, :width // 2, :] = 0
    raw = write_stack(str(tmp_path / "raw"), drifted, chunks=(2, 32, 32))
    params = {"tile": 32, "clip_limit": 0.0, "low": 1.0, "high": 99.0}
    _, out = _run(raw, str(tmp_path / "out"), (4, 160, 160), client, params)
    inside = out[:, 12:, 12:].astype(int)
    assert np.abs(inside - inside[0]).mean() < 4, np.abs(inside - inside[0]).mean(axis=(1, 2))


@pytest.mark.parametrize("chunk", [(3, 37, 64), (1, 8, 8), (7, 301, 250)])
def test_the_levels_passes_read_each_chunk_once_and_sample_as_before(tmp_path, chunk):
    """`sampled_rows` (section_normalize's and the tissue stage's first passes) reads bands of whole chunks and
    gives every SAMPLE_STEP-th row of each section: the same pixels as reading the sections whole one by one
    (which decompressed every chunk once per section it holds), for chunk heights that are not multiples of it."""
    from connectome.alignment.contrast import SAMPLE_STEP, sampled_rows
    from connectome.io import create_volume
    from connectome.tissue.levels import rows_stats, section_stats

    from conftest import data_file

    with np.load(data_file("drosophila_vnc_sstem/vnc_stack1.npz")) as f:
        raw = f["raw"][:7, :301, :250].copy()
    raw[2, :40] = 0  # a margin
    vol = create_volume(str(tmp_path / "raw"), raw.shape, np.uint8, chunk, (50.0, 4.0, 4.0))
    vol.write(vol.box, raw)
    reads = []
    read = vol.read
    vol.read = lambda box: reads.append(box) or read(box)  # type: ignore[method-assign]
    got = {z: rows.copy() for z, rows in sampled_rows(vol)}
    assert sorted(got) == list(range(7))
    for z in range(7):
        np.testing.assert_array_equal(got[z], raw[z, ::SAMPLE_STEP])
        assert rows_stats(got[z]) == section_stats(raw[z])
    # whole chunks' sections at once, each part of the volume once (it read every section on its own)
    assert all(b.offset[0] % chunk[0] == 0 and b.shape[0] == min(chunk[0], 7 - b.offset[0]) for b in reads)
    assert len({(b.offset[0], b.offset[1]) for b in reads}) == len(reads)
    assert sum(b.shape[0] * b.shape[1] for b in reads) <= raw.shape[0] * raw.shape[1]


def test_exact_zero_pixels_stay_zero(tmp_path, client):
    """The margins an alignment leaves and a blank section (pixels exactly 0) stay 0 after normalisation, so the
    steps that read exact 0 as "no data" still find them (they came out as 3); no image pixel becomes 0."""
    base = clean_stack(4, 160, noise=0.0).astype(np.float64)
    stack = np.clip(base * 0.6 + 50, 1, 255).astype(np.uint8)
    stack[1, :, :17] = 0  # a margin
    stack[2, :9] = 0
    stack[3] = 0  # a blank section
    raw = write_stack(str(tmp_path / "raw"), stack, chunks=(2, 32, 32))
    for clip_limit in (0.0, 0.02):
        params = {"tile": 32, "clip_limit": clip_limit, "low": 1.0, "high": 99.0}
        _, out = _run(raw, str(tmp_path / f"out{clip_limit}"), (4, 160, 160), client, params)
        np.testing.assert_array_equal(out == 0, stack == 0)
