"""`connectome view` in a real browser: headless Chromium loads the printed URL, and the screenshot
shows the segmentation's colours in the 2-D panel and meshes (sharded, Draco) in the 3-D panel; the
synapse annotation layer is loaded too; no request failed."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from connectome.export.layers import find_layers
from connectome.export.state import url_mapper, viewer_state
from connectome.io import open_volume

from chromium import Chromium, find_chromium

REPO = Path(__file__).resolve().parents[2]
ALPHA = 0.6  # the state's selectedAlpha: a segment's colour over the raw image in the 2-D panels


def _colour(segment: int) -> np.ndarray:
    from neuroglancer.segment_colors import hex_string_from_segment_id

    text = hex_string_from_segment_id(0, segment)  # colour seed 0, as in the state
    return np.array([int(text[i:i + 2], 16) for i in (1, 3, 5)], float)


def _blended_mask(pixels: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Pixels that are `colour` at ALPHA over some grey: what is left after removing it is grey."""
    rest = pixels - ALPHA * colour
    return (rest.max(-1) - rest.min(-1) <= 8) & (rest.min(-1) >= -4) & (rest.max(-1) <= (1 - ALPHA) * 255 + 4)


def _blended(pixels: np.ndarray, colour: np.ndarray) -> int:
    return int(_blended_mask(pixels, colour).sum())


def _voxels_under(rect, shape_yx, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) voxel of the centre section under each pixel of the 2-D panel `rect` (as cut by `_panel`),
    the view centred on the volume at `scale` voxels per pixel."""
    x, y, w, h = (int(round(v)) for v in rect)
    px = np.arange(2, w - 2) + 0.5 - rect[2] / 2
    py = np.arange(2, h - 2) + 0.5 - rect[3] / 2
    vx = np.floor(shape_yx[1] / 2 + px * scale).astype(int)
    vy = np.floor(shape_yx[0] / 2 + py * scale).astype(int)
    return np.meshgrid(vy, vx, indexing="ij")


def _shaded(pixels: np.ndarray, colour: np.ndarray) -> int:
    """Pixels that are `colour` under some lighting (proportional to it, not dark)."""
    norm = np.linalg.norm(pixels, axis=-1)
    cosine = (pixels @ colour) / np.maximum(norm * np.linalg.norm(colour), 1e-9)
    return int(((cosine > 0.995) & (norm > 60)).sum())


def _start_view(out: Path, log):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "connectome.cli", "view", str(out), "--no-browser", "--port", "0",
                             "--log-requests"],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO)
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("http"):
            return proc, line.strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"connectome view printed no URL (exit code {proc.poll()})")


@pytest.mark.browser
def test_view_in_chromium(segmented_output, tmp_path):
    from PIL import Image

    binary = find_chromium()
    if binary is None:
        message = "chromium not found (bash deploy/browser/install.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    seg = open_volume(str(segmented_output / "segmentation"))
    labels = seg.read(seg.box)
    z = seg.shape[0] // 2  # the state's position: the volume's centre
    ids, areas = np.unique(labels[z], return_counts=True)
    in_slice = [int(i) for i in ids[np.argsort(-areas)] if i != 0][:3]
    state = viewer_state(find_layers(str(segmented_output)), url_mapper(str(segmented_output), "http://x"))
    ids3d, sizes = np.unique(labels, return_counts=True)
    largest = [int(i) for i in ids3d[np.argsort(-sizes)] if i != 0][:5]

    log_path = tmp_path / "view.log"
    with open(log_path, "w") as log:
        proc, url = _start_view(segmented_output, log)
        try:
            with Chromium(binary, str(tmp_path / "profile")) as browser:
                browser.navigate(url)
                rects = []
                for _ in range(30):  # until the panels are laid out and drawn (at most ~60 s)
                    browser.wait(2)
                    rects = browser.evaluate(
                        "Array.from(document.querySelectorAll('.neuroglancer-rendered-data-panel'))"
                        ".map(e => {const r = e.getBoundingClientRect(); return [r.x, r.y, r.width, r.height];})")
                    if rects and len(rects) == 4:
                        shot = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB"), float)
                        xy, persp = (_panel(shot, rects[0]), _panel(shot, rects[2]))
                        if (all(_blended(xy, _colour(s)) > 200 for s in in_slice)
                                and (persp.max(-1) > 0).mean() > 0.05):
                            browser.wait(2)  # one more frame, then the final picture
                            break
                png = browser.screenshot()
                failed, errors = browser.failed_requests, browser.console_errors
        finally:
            proc.terminate()
            proc.wait(20)
    (tmp_path / "view.png").write_bytes(png)
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "view.png", REPO / "benchmarks" / "results" / "view.png")

    assert rects and len(rects) == 4, "Neuroglancer did not lay out its four panels"
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), float)
    xy, persp = _panel(shot, rects[0]), _panel(shot, rects[2])
    vy, vx = _voxels_under(rects[0], labels.shape[1:], state["crossSectionScale"])
    inside = (vy >= 0) & (vy < labels.shape[1]) & (vx >= 0) & (vx < labels.shape[2])
    for segment in in_slice:  # the largest segments of the centre section, coloured in the 2-D panel
        found = _blended_mask(xy, _colour(segment))
        assert found.sum() > 200, f"segment {segment} not coloured in the 2-D panel"
        # ... where the segment is (within a voxel: the view's centre may sit half a voxel off)
        near = binary_dilation(labels[z] == segment, iterations=1)
        where = np.zeros(found.shape, bool)
        where[inside] = near[vy[inside], vx[inside]]
        assert (found & where).sum() > 0.9 * found.sum(), f"segment {segment}'s colour drawn where it is not"
    assert (persp.max(-1) > 0).mean() > 0.05, "the 3-D panel is empty"
    assert max(_shaded(persp, _colour(s)) for s in largest) > 200, "no mesh of a large segment in the 3-D panel"
    served = log_path.read_text()
    assert "request failed" not in served, served
    # the neuroglancer package's own server has no favicon; every data request must have succeeded
    assert [f for f in failed if not f[1].endswith("/favicon.ico")] == []
    assert errors == []
    # the synapse layer (made by `view` from synapses.csv) and the mesh shards were read
    layers = find_layers(str(segmented_output))
    assert layers.synapses is not None
    assert any(layer["name"] == "synapses" for layer in viewer_state(layers, lambda p: p)["layers"])
    fetched = [line.split()[-1] for line in served.splitlines() if line.startswith("connectome view: served: 20")]
    # the layer is filtered to the shown segments' synapses: read through the relationship indices
    assert any("/synapse_annotations/rel_pre/" in url for url in fetched), fetched
    assert any("/synapse_annotations/rel_post/" in url for url in fetched), fetched
    assert any(url.endswith(".shard") and "/meshes/" in url for url in fetched), fetched


def _panel(shot: np.ndarray, rect) -> np.ndarray:
    x, y, w, h = (int(round(v)) for v in rect)
    return shot[y + 2:y + h - 2, x + 2:x + w - 2]
