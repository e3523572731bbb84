"""The synthetic EM generator: determinism, dense labels, consistent ground truth, defects, saving."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from connectome.cli.main import main
from connectome.io import open_volume
from connectome.synth import Defects, ImagingOptions, generate, load_ground_truth
from connectome.synth import codes as K
from connectome.synth.imaging import boundary_distance

ISO = dict(shape=(32, 128, 128), voxel_size=(8.0, 8.0, 8.0))  # 0.26 x 1 x 1 um
ANISO = dict(shape=(16, 256, 256), voxel_size=(40.0, 4.0, 4.0))  # 0.64 x 1 x 1 um
QUIET = ImagingOptions(noise=0.0)  # detector noise off, where a test compares two images pixel by pixel


@pytest.fixture(scope="module", params=["iso", "aniso"])
def vol(request):
    return generate(**(ISO if request.param == "iso" else ANISO), seed=7)


def in_plane_boundary(labels: np.ndarray) -> np.ndarray:
    """Cell voxels with a different id next to them in y or x."""
    b = np.zeros(labels.shape, bool)
    for axis in (1, 2):
        a = [slice(None)] * 3
        c = [slice(None)] * 3
        a[axis], c[axis] = slice(1, None), slice(None, -1)
        differ = labels[tuple(a)] != labels[tuple(c)]
        b[tuple(a)] |= differ
        b[tuple(c)] |= differ
    return b & (labels > 0)


def test_same_seed_same_volume_and_tables():
    a = generate(**ISO, seed=3)
    b = generate(**ISO, seed=3)
    for name in ("raw", "labels", "tissue", "compartments", "organelles"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.classes == b.classes
    assert np.array_equal(a.synapses, b.synapses)
    assert a.skeletons.keys() == b.skeletons.keys()
    for k in a.skeletons:
        assert np.array_equal(a.skeletons[k][0], b.skeletons[k][0])
        assert np.array_equal(a.skeletons[k][1], b.skeletons[k][1])


def test_different_seed_different_volume():
    a = generate(**ISO, seed=3)
    b = generate(**ISO, seed=4)
    assert not np.array_equal(a.labels, b.labels)
    assert np.mean(a.raw != b.raw) > 0.5


def test_shapes_and_dtypes(vol):
    for name, dtype in (("raw", np.uint8), ("labels", np.uint64), ("tissue", np.uint8),
                        ("compartments", np.uint8), ("organelles", np.uint8)):
        arr = getattr(vol, name)
        assert arr.shape == vol.shape and arr.dtype == dtype, name
    assert vol.section_shifts.shape == (vol.shape[0], 2)


def test_labels_are_dense(vol):
    """Fixed neuropil in EM has only a few per cent extracellular space; we leave thin slivers.

    Id 0 is allowed only for extracellular space and the blood vessel (lumen and wall), and
    outside the vessel it must stay under 5 % of the voxels.
    """
    zero = vol.labels == 0
    vessel = vol.tissue == K.TISSUE_VESSEL
    assert np.all(zero[vessel])
    ecs = zero & ~vessel
    assert ecs.mean() < 0.05
    assert np.all(vol.compartments[ecs] == K.C_NONE)
    assert np.all(vol.compartments[~zero] != K.C_NONE)


def test_classes_cover_every_id(vol):
    ids = set(int(i) for i in np.unique(vol.labels)) - {0}
    assert ids == set(vol.classes)
    assert set(vol.classes.values()) <= set(K.CLASSES)
    present = set(vol.classes.values())
    assert K.AXON in present and K.GLIA in present
    assert present & {K.DENDRITE, K.SOMA}  # dendrites of a soma in view carry the soma's id


def test_tissue_agrees_with_classes(vol):
    ids = np.unique(vol.labels[vol.tissue == K.TISSUE_SOMA])
    assert len(ids) and {vol.classes[int(i)] for i in ids} == {K.SOMA}


def test_myelin_tissue_is_the_sheaths_of_glia():
    """The fixtures' volumes (under 8 um^3) hold no myelinated axon by default: one is asked for here."""
    from connectome.synth.options import TissueOptions

    v = generate(**ISO, seed=7, tissue=TissueOptions(myelinated_axons=1))
    ids = np.unique(v.labels[v.tissue == K.TISSUE_MYELIN])
    assert len(ids) and {v.classes[int(i)] for i in ids} == {K.GLIA}


def test_synapses_join_two_touching_cells(vol):
    assert len(vol.synapses) >= 1
    pad = 1
    for s in vol.synapses:
        pre, post = int(s["pre_id"]), int(s["post_id"])
        assert pre != post
        assert vol.classes[pre] == K.AXON
        assert vol.classes[post] in (K.DENDRITE, K.SOMA)
        z, y, x = int(s["z"]), int(s["y"]), int(s["x"])
        assert vol.labels[z, y, x] == post
        near = vol.labels[max(z - pad, 0):z + pad + 1, max(y - pad, 0):y + pad + 1, max(x - pad, 0):x + pad + 1]
        assert pre in near and post in near
    # each has a postsynaptic density on the partner's side and vesicles in the bouton
    psd = vol.organelles == K.O_PSD
    assert set(np.unique(vol.labels[psd])) <= set(vol.synapses["post_id"])
    ves_ids = set(int(i) for i in np.unique(vol.labels[vol.organelles == K.O_VESICLE]))
    assert ves_ids and ves_ids <= set(int(i) for i in vol.synapses["pre_id"])


def test_skeletons_follow_their_cells(vol):
    vs = np.asarray(vol.voxel_size)
    assert set(vol.skeletons) <= set(vol.classes)
    assert {vol.classes[i] for i in vol.skeletons} <= {K.AXON, K.DENDRITE, K.SOMA}
    total = inside = 0
    for label, (nodes, edges) in vol.skeletons.items():
        vox = np.round(nodes / vs).astype(int)
        assert np.all((vox >= 0) & (vox < vol.shape))
        if len(edges):
            assert edges.min() >= 0 and edges.max() < len(nodes)
        total += len(nodes)
        inside += int(np.sum(vol.labels[tuple(vox.T)] == label))
    assert total > 0
    assert inside / total > 0.85  # centrelines run inside their cells (overlaps cut a few corners)


def test_membranes_are_darker_than_cytoplasm(vol):
    """Membranes stand out against the cytoplasm by more than the detector noise (about 13 levels)."""
    raw = vol.raw.astype(float)
    boundary = in_plane_boundary(vol.labels)
    interior = (boundary_distance(vol.labels, vol.voxel_size) > 40) & (vol.organelles == 0)
    interior &= vol.compartments != K.C_MYELIN
    assert raw[boundary].mean() < raw[interior].mean() - 20


def test_dark_organelles_lie_inside_cells(vol):
    """Mitochondria are dark like membranes, but they are not cell boundaries."""
    mito = vol.organelles == K.O_MITOCHONDRION
    assert mito.sum() > 0
    raw = vol.raw.astype(float)
    interior = (boundary_distance(vol.labels, vol.voxel_size) > 40) & (vol.organelles == 0)
    assert raw[mito].mean() < raw[interior].mean() - 20
    assert np.all(vol.labels[mito] > 0)
    assert in_plane_boundary(vol.labels)[mito].mean() < 0.1


def phase_correlation(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """The whole-pixel (dy, dx) with b(p) = a(p - d), from the peak of the phase correlation.

    A Hann window keeps the image edges (which do not move) from voting for a zero shift.
    """
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    r = fb * np.conj(fa)
    peak = np.fft.ifft2(r / (np.abs(r) + 1e-9)).real
    k = np.unravel_index(np.argmax(peak), peak.shape)
    return tuple(int(c if c <= n // 2 else c - n) for c, n in zip(k, peak.shape))


def test_section_shifts_match_the_image():
    plain = generate(**ISO, seed=5, imaging_options=QUIET)
    shifted = generate(**ISO, seed=5, imaging_options=QUIET, defects=Defects(shifts=True))
    assert np.array_equal(plain.labels, shifted.labels)  # defects leave the tissue alone
    shifts = shifted.section_shifts
    assert np.all(shifts[0] == 0) and np.any(shifts != 0)
    assert np.all(np.abs(shifts) <= Defects().max_shift_px)
    for z in range(plain.shape[0]):
        found = phase_correlation(plain.raw[z].astype(float), shifted.raw[z].astype(float))
        assert found == tuple(int(v) for v in shifts[z]), z


def test_subpixel_shifts_follow_the_recorded_convention():
    plain = generate(**ISO, seed=5, imaging_options=QUIET)
    shifted = generate(**ISO, seed=5, imaging_options=QUIET, defects=Defects(shifts=True, subpixel=True))
    shifts = shifted.section_shifts
    assert np.any(shifts != np.round(shifts))
    for z in range(plain.shape[0]):
        expect = ndi.shift(plain.raw[z].astype(float), shifts[z], order=1, mode="reflect")
        # both images were rounded to uint8 once, so they may differ by one grey level
        assert np.abs(expect - shifted.raw[z]).max() <= 1.0 + 1e-6, z


def test_missing_sections_are_blank_and_marked():
    plain = generate(**ISO, seed=6)
    broken = generate(**ISO, seed=6, defects=Defects(missing=True, missing_sections=2))
    missing = broken.sections.missing
    assert len(missing) == 2
    for z in range(plain.shape[0]):
        if z in missing:
            assert np.all(broken.raw[z] == 0) and np.all(broken.tissue[z] == K.TISSUE_DEFECT)
        else:
            assert np.array_equal(broken.raw[z], plain.raw[z])
            assert not np.any(broken.tissue[z] == K.TISSUE_DEFECT)


def test_brightness_drift_follows_the_record():
    plain = generate(**ISO, seed=6, imaging_options=QUIET)
    drifted = generate(**ISO, seed=6, imaging_options=QUIET, defects=Defects(drift=True))
    gain, offset = drifted.sections.gain, drifted.sections.offset
    assert np.ptp(gain) > 0.1
    expect = plain.raw.mean(axis=(1, 2)) * gain + 255 * offset
    assert np.abs(drifted.raw.mean(axis=(1, 2)) - expect).max() < 1.5


def test_defect_names():
    assert Defects.from_names("shifts, drift") == Defects(shifts=True, drift=True)
    with pytest.raises(ValueError, match="bogus"):
        Defects.from_names("shifts,bogus")


def test_save_and_load_round_trip(tmp_path):
    vol = generate(**ISO, seed=2, defects=Defects(shifts=True, missing=True))
    paths = vol.save(str(tmp_path / "synth"), chunk_shape=(16, 64, 64))
    for name in ("raw", "labels", "tissue", "compartments", "organelles"):
        v = open_volume(paths[name])
        assert v.meta.voxel_size == vol.voxel_size
        assert v.meta.chunk_shape == (16, 64, 64)
        assert np.array_equal(v.read(v.box), getattr(vol, name)), name
    gt = load_ground_truth(str(tmp_path / "synth"))
    assert gt.classes == vol.classes
    assert np.array_equal(gt.synapses, vol.synapses)
    assert gt.skeletons.keys() == vol.skeletons.keys()
    for k, (nodes, edges) in vol.skeletons.items():
        assert np.array_equal(gt.skeletons[k][0], nodes) and np.array_equal(gt.skeletons[k][1], edges)
    assert np.array_equal(gt.section_shifts, vol.section_shifts)
    assert gt.defects["missing_sections"] == vol.sections.missing
    assert gt.meta["voxel_size"] == list(vol.voxel_size)


def test_command_writes_volumes_and_tables(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["synth", str(out), "--shape", "16", "64", "64", "--voxel-size", "40", "8", "8",
               "--seed", "1", "--defects", "shifts,drift", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape"] == [16, 64, 64] and summary["voxel_size"] == [40.0, 8.0, 8.0]
    raw = open_volume(summary["raw"])
    assert raw.meta.shape == (16, 64, 64) and raw.meta.dtype == np.uint8
    assert load_ground_truth(str(out)).defects["options"]["shifts"] is True


def test_command_rejects_bad_defects(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "x"), "--defects", "shifts,bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bogus" in err[0]


def test_command_keeps_an_existing_volume_unless_overwrite(tmp_path, capsys):
    """Another seed into a folder holding a volume replaced it without a word; now refused in one line."""
    out = tmp_path / "s"
    assert main(["synth", str(out), "--shape", "8", "32", "32", "--seed", "1"]) == 0
    raw = open_volume(str(out / "raw"))
    before = raw.read(raw.box)
    capsys.readouterr()
    assert main(["synth", str(out), "--shape", "8", "32", "32", "--seed", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds raw, labels" in err[0] and "--overwrite" in err[0], err
    assert np.array_equal(raw.read(raw.box), before)
    assert main(["synth", str(out), "--shape", "8", "32", "32", "--seed", "2", "--overwrite"]) == 0
    assert not np.array_equal(raw.read(raw.box), before)
