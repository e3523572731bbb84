"""Sections stored out of their physical order: recovered from the images (real stacks), left alone when in
order, and undone by `connectome segment` (segmented in the recovered order, written in the stored one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from connectome.alignment.reordering import checked_order, order_finding, order_report
from connectome.alignment.section_order import (
    band_of,
    banded_similarity,
    kept_pairs,
    misplaced_sections,
    move_gains,
    positions,
    recover_order,
    section_images,
    section_order,
    similarity,
)
from connectome.cli.main import main
from connectome.core.errors import UserError
from connectome.io import open_volume

from conftest import data_file

pytestmark = pytest.mark.timeout(600)


def _npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def _neighbours(order) -> set[frozenset[int]]:
    return {frozenset((int(a), int(b))) for a, b in zip(order[:-1], order[1:])}


def test_a_shuffled_line_of_200_comes_back_in_order():
    rng = np.random.default_rng(3)
    n = 200
    truth = rng.permutation(n)  # stored section s lies at physical position truth[s]
    at = truth.astype(float)
    similarity = np.exp(-np.abs(at[:, None] - at[None, :]) / 3.0) + rng.normal(0, 0.01, (n, n))
    similarity = (similarity + similarity.T) / 2
    order = recover_order(similarity)
    assert _neighbours(order) == _neighbours(np.argsort(truth))
    assert kept_pairs(order) < 0.1
    assert np.array_equal(positions(order)[order], np.arange(n))


def test_the_real_cremi_crop_stored_out_of_order_is_recovered():
    with np.load(data_file("cremi_sstem_crop/cremi_train.npz")) as f:
        ids = f["neuron_ids"]
    order = section_order(open_volume(f"{data_file('cremi_sstem_crop/cremi_train.npz')}#raw"))
    assert order.recovered and order.kept_pairs < 0.2
    # the labels agree: neighbours in the recovered order share a neuron id on most voxels, as stored they do not
    same = [np.mean((ids[a] == ids[b]) & (ids[a] != 0)) for a, b in zip(order.order[:-1], order.order[1:])]
    stored = [np.mean((ids[z] == ids[z + 1]) & (ids[z] != 0)) for z in range(len(ids) - 1)]
    assert np.mean(same) > 0.75 and np.mean(stored) < 0.3, (np.mean(same), np.mean(stored))
    # and the images give exactly the path the labels give (similarity: the share of voxels with one id)
    flat = ids.reshape(len(ids), -1)
    by_labels = np.array([[np.mean(flat[a] == flat[b]) for b in range(len(ids))] for a in range(len(ids))])
    assert _neighbours(order.order) == _neighbours(recover_order(by_labels))


def _shifted(raw: np.ndarray, seed: int) -> np.ndarray:
    """Real sections in order, each moved by up to 25 px with zeros where it has no data (as a warp leaves them)."""
    rng = np.random.default_rng(seed)
    out = [ndimage.shift(s.astype(float), rng.integers(-25, 26, 2), order=1, cval=0) for s in raw]
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [1, 3, 6])
def test_zero_margins_of_sections_in_order_are_no_likeness(seed):
    """Margins alike in two sections made them alike: a stack in order was reordered (seed 1) or a section named
    out of place (3, 6)."""
    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        stack = _shifted(f["train_raw"][:12, :400, :400], seed)
    for mode in ("auto", "recover"):
        order = section_order(stack, mode)
        assert not order.recovered and order.order == tuple(range(12)) and order.misplaced == (), (mode, order)


def test_a_blank_section_keeps_its_place_in_a_recovered_order():
    """A blank section is like no other: a path would put it at an end, where it costs least."""
    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        stack = f["train_raw"][:12, :400, :400].copy()
    stack[4] = 0
    assert section_order(stack, "recover").order == tuple(range(12))
    n = 10
    line = np.exp(-np.abs(np.subtract.outer(np.arange(n), np.arange(n))) / 2.0)
    for blank in (0, 1, 6, 9):  # blanks at an end, and two together
        line[blank], line[:, blank] = 0.0, 0.0
    assert recover_order(line).tolist() == list(range(n))
    rng = np.random.default_rng(2)
    truth = rng.permutation(n)  # shuffled: the other sections' path is recovered whole
    at = np.where(np.isin(np.arange(n), (0, 1, 6, 9)), -100.0, truth.astype(float))
    shuffled = np.exp(-np.abs(at[:, None] - at[None, :]) / 2.0) * (at[:, None] >= 0) * (at[None, :] >= 0)
    order = recover_order(shuffled).tolist()
    alike = [z for z in order if z not in (0, 1, 6, 9)]
    assert _neighbours(alike) == _neighbours([z for z in np.argsort(truth) if z in alike])
    assert sorted(order) == list(range(n))
    assert recover_order(line[::-1, ::-1]).tolist() == list(range(n))  # the blanks reversed: 0, 3, 8, 9


@pytest.mark.parametrize("relative, key", [("isbi2012/isbi2012.npz", "train_raw"), ("isbi2012/isbi2012.npz", "test_raw"),
                                           ("drosophila_vnc_sstem/vnc_stack1.npz", "raw")])
def test_real_stacks_in_order_are_left_alone(relative, key):
    order = section_order(open_volume(f"{data_file(relative)}#{key}"))
    assert not order.recovered and order.kept_pairs == 1.0
    assert order.order == tuple(range(len(order.order)))
    assert order.misplaced == ()  # and no section is reported out of place


def test_move_gains_are_the_change_of_the_path_similarity():
    rng = np.random.default_rng(0)
    n = 9
    a = rng.random((n, n))
    sim = (a + a.T) / 2
    order = rng.permutation(n)

    def total(o):
        return sum(sim[o[k], o[k + 1]] for k in range(n - 1))

    for shift in (-4, -3, -1, 1, 2, 4):
        gains = move_gains(lambda a, b: sim[a, b], order, shift)
        for i in range(n):
            if not 0 <= i + shift < n:
                assert gains[i] == -np.inf
                continue
            moved = list(order)
            moved.insert(i + shift, moved.pop(i))
            assert gains[i] == pytest.approx(total(moved) - total(order), abs=1e-12)


@pytest.mark.parametrize("relative, key, disorder", [
    ("isbi2012/isbi2012.npz", "train_raw", ("swap", 18)), ("isbi2012/isbi2012.npz", "train_raw", ("slip", 13, 3)),
    ("drosophila_vnc_sstem/vnc_stack1.npz", "raw", ("swap", 11)),
    ("drosophila_vnc_sstem/vnc_stack1.npz", "raw", ("slip", 8, -2))])
def test_a_swapped_or_slipped_real_section_is_reported_and_the_order_kept(relative, key, disorder):
    """A stack in order but for one pair of sections swapped, or one section a few places off: `auto` keeps the
    stored order (most neighbours are neighbours) and names the section; `recover` puts it back exactly."""
    with np.load(data_file(relative)) as f:
        raw = f[key]
    stored = list(range(len(raw)))
    z = disorder[1]
    if disorder[0] == "swap":
        stored[z], stored[z + 1] = stored[z + 1], stored[z]
        expected = {z, z + 1}  # moving either puts both back
    else:
        stored.insert(z + disorder[2], stored.pop(z))
        expected = {z + disorder[2]}  # where the slipped section is stored now
    sim = similarity(section_images(raw))[np.ix_(stored, stored)]
    found = misplaced_sections(band_of(sim))
    assert len(found) == 1 and set(found) <= expected, (found, expected)
    assert misplaced_sections(band_of(similarity(section_images(raw)))) == ()
    order = recover_order(sim)
    assert [stored[k] for k in order] == list(range(len(raw)))  # what `--section-order recover` works in


def test_a_blank_section_in_an_ordered_stack_does_not_reorder_it(tmp_path):
    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        raw = f["train_raw"][:12].copy()
    raw[5] = 0
    order = section_order(open_volume(_npz(tmp_path / "blank.npz", raw=raw) + "#raw"))
    assert not order.recovered and order.kept_pairs >= 0.8
    assert order.misplaced == ()  # a blank section is a defect (flagged by align), not a misplaced one
    raw[10] = 0  # near the end, where moving it to the end would join its neighbours
    assert section_order(open_volume(_npz(tmp_path / "blank2.npz", raw=raw) + "#raw")).misplaced == ()


def test_stacks_longer_than_auto_recovers_are_checked_near_each_section(tmp_path, monkeypatch, capsys):
    """Above MAX_SECTIONS (here lowered to 16 for ISBI's 30 sections) `auto` compares each section with the BAND
    after it only (memory and time linear in the stack): it keeps the stored order, names a swapped section, and
    says that a shuffled stack looks out of order."""
    import connectome.alignment.section_order as so
    from connectome.alignment.reordering import say_order

    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        raw = f["train_raw"]
    band = banded_similarity(raw, so.BAND, batch=7)  # read 7 sections at a time: the same as the whole matrix
    np.testing.assert_allclose(band, band_of(similarity(section_images(raw))), atol=1e-6)
    monkeypatch.setattr(so, "MAX_SECTIONS", 16)
    swapped = raw.copy()
    swapped[[12, 13]] = raw[[13, 12]]
    cases = {"ordered": raw, "swapped": swapped, "shuffled": raw[np.random.default_rng(1).permutation(len(raw))]}
    orders = {name: so.section_order(stack) for name, stack in cases.items()}
    for name, order in orders.items():
        assert not order.recovered and order.order == tuple(range(len(raw))), name
    assert orders["ordered"].misplaced == () and not orders["ordered"].unrecovered
    assert orders["swapped"].misplaced in ((12,), (13,)) and not orders["swapped"].unrecovered
    assert orders["shuffled"].unrecovered and orders["shuffled"].misplaced == ()
    assert not say_order("lab/", orders["shuffled"], "")  # the stored order is kept ...
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "30 sections look out of order" in err[0] and "--section-order recover" in err[0], err
    assert so.section_order(cases["shuffled"], "recover").recovered  # ... and recover finds it
    assert order_finding(orders["shuffled"]) == {"order": "stored", "out_of_order": True}  # in --json
    assert order_finding(orders["swapped"]) == {"order": "stored", "misplaced": list(orders["swapped"].misplaced)}
    assert order_finding(orders["ordered"]) == {} and order_finding(None) == {}


def test_which_volumes_are_checked(tmp_path):
    address = _npz(tmp_path / "v.npz", raw=np.zeros((4, 64, 64), np.uint8)) + "#raw"
    assert checked_order(address, (40, 4, 4), "keep") is None
    assert checked_order(address, (10, 10, 10), "auto") is None  # not serial sections
    assert checked_order(address, (10, 10, 10), "recover") is not None
    assert checked_order(address, (40, 4, 4), "auto") is not None
    channels = _npz(tmp_path / "c.npz", raw=np.zeros((3, 4, 64, 64), np.uint8)) + "#raw"
    assert checked_order(channels, (40, 4, 4), "recover") is None  # not an EM image
    with pytest.raises(UserError, match="--section-order sideways: expected one of auto, keep, recover"):
        checked_order(address, (40, 4, 4), "sideways")


def _segment(capsys, raw, out, *extra):
    code = main(["segment", raw, str(out), "--model", "sstem", "--voxel-size", "50", "4", "4", "--tta", "1",
                 "--block-shape", "8", "256", "256", "--workers", "2", "--no-progress", "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1]), captured.err


def _read(address):
    volume = open_volume(address)
    return volume.read(volume.box)


def test_segment_undoes_a_shuffle_exactly_and_resumes(tmp_path, capsys):
    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        ordered = f["train_raw"][:8]
    stored_at = np.array([0, 5, 2, 1, 6, 3, 7, 4])  # stored section s is physical section stored_at[s]
    shuffled = np.empty_like(ordered)
    shuffled[np.arange(8)] = ordered[stored_at]
    a = _npz(tmp_path / "a.npz", ordered=ordered, shuffled=shuffled)

    plain, err = _segment(capsys, a + "#ordered", tmp_path / "ordered")
    assert "section_order" not in plain and "out of order" not in err
    fixed, err = _segment(capsys, a + "#shuffled", tmp_path / "fixed")
    assert "look out of order" in err and err.count("\n") == 1
    assert fixed["section_order"] == {"order": "recovered", "sections": np.argsort(stored_at).tolist()}
    assert [s["stage"] for s in fixed["stages"]][0] == "reorder_sections"
    assert [s["stage"] for s in fixed["stages"]][-1] == "restore_section_order"
    seg = _read(fixed["segmentation"])
    # the same run as on the ordered sections, each written back where its section is stored
    assert np.array_equal(seg, _read(plain["segmentation"])[stored_at])
    assert seg.shape == shuffled.shape and (seg != 0).mean() > 0.5

    again, _ = _segment(capsys, a + "#shuffled", tmp_path / "fixed")
    assert all(s["ran"] == 0 for s in again["stages"]), again["stages"]

    kept, err = _segment(capsys, a + "#shuffled", tmp_path / "kept", "--section-order", "keep")
    assert "section_order" not in kept and "out of order" not in err
    assert not np.array_equal(_read(kept["segmentation"]), seg)

    # evaluate warns that its skeleton counts follow the stored order (not for the stored-order run, nor per section);
    # given skeletons, so that kimimaro does not skeletonise the raw image's grey levels as objects (minutes)
    from connectome.metrics import Skeletons

    skeletons = str(tmp_path / "skeletons.npz")
    Skeletons(np.array([[z, 100, x] for z in (0, 1) for x in (100, 110)], float), np.array([[0, 1], [2, 3]]),
              np.array([1, 1, 2, 2], np.uint64)).save(skeletons)
    for name, extra, warned in (("fixed", [], True), ("kept", [], False), ("fixed", ["--per-section"], False)):
        assert main(["evaluate", "--seg", str(tmp_path / name / "segmentation"), "--gt", a + "#shuffled",
                     "--voxel-size", "50", "4", "4", "--skeletons", skeletons, "--json", *extra]) == 0
        said = [line for line in capsys.readouterr().err.splitlines() if "recovered section order" in line]
        assert len(said) == int(warned), (name, extra, said)


def test_a_mask_with_sections_out_of_order_is_refused(tmp_path, capsys):
    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        shuffled = f["train_raw"][[0, 5, 2, 1, 6, 3, 7, 4]]
    a = _npz(tmp_path / "a.npz", raw=shuffled, mask=np.zeros_like(shuffled))
    code = main(["segment", a + "#raw", str(tmp_path / "out"), "--model", "sstem", "--voxel-size", "50", "4", "4",
                 "--mask", a + "#mask", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "a mask is not reordered with them; give --section-order keep" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_align_works_in_the_recovered_order(tmp_path, capsys):
    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        ordered = f["train_raw"][:8, 128:384, 128:384]
    stored_at = np.array([0, 4, 1, 5, 2, 6, 3, 7])  # no stored neighbours are physical ones; runs with the stored order
    a = _npz(tmp_path / "a.npz", ordered=ordered, shuffled=ordered[stored_at])
    runs = {}
    for key in ("ordered", "shuffled"):
        code = main(["align", f"{a}#{key}", str(tmp_path / key), "--voxel-size", "50", "4", "4", "--block-shape", "8",
                     "256", "256", "--patch", "64", "--stride", "64", "--search", "32", "--workers", "2",
                     "--no-progress", "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        runs[key] = json.loads(captured.out.strip().splitlines()[-1]), captured.err
    (plain, plain_err), (fixed, fixed_err) = runs["ordered"], runs["shuffled"]
    assert "section_order" not in plain and "out of order" not in plain_err
    assert "aligning in the recovered order" in fixed_err
    assert fixed["section_order"]["sections"] == np.argsort(stored_at).tolist()
    # the same alignment as of the ordered sections, and the flags of the same sections
    assert np.array_equal(_read(fixed["aligned"]), _read(plain["aligned"]))
    assert fixed["flagged_sections"] == plain["flagged_sections"]
    # with other settings: refused in one line, the warning about the order not said before it
    code = main(["align", f"{a}#shuffled", str(tmp_path / "shuffled"), "--voxel-size", "50", "4", "4", "--block-shape",
                 "8", "256", "256", "--patch", "64", "--stride", "64", "--search", "16", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "was started with other settings" in err[0], err


@pytest.mark.parametrize("method, model", [("affinities", "fib-10nm"), ("ffn", "ffn-fib-10nm")])
def test_a_refusal_on_a_reordered_stack_names_the_given_raw(tmp_path, capsys, method, model):
    """A model of another voxel size on a shuffled stack: the message named OUT/ordered_raw, which the user never
    gave and which does not exist. The refusal is the one line on stderr: the warning that the sections look out of
    order was printed before it (it is said once the checks pass, as in the test above)."""
    raw = f"{data_file('cremi_sstem_crop/cremi_train.npz')}#raw[0:20]"
    code = main(["segment", raw, str(tmp_path / "out"), "--method", method, "--model", model, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "look out of order" not in err, err
    last = err.strip().splitlines()[-1]
    assert f"but {raw} (its sections in the recovered order)" in last and "ordered_raw" not in last, last
    assert not (tmp_path / "out").exists()
    if method == "affinities":  # reconstruct, which segments the same way
        assert main(["reconstruct", raw, str(tmp_path / "out"), "--model", model, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "(its sections in the recovered order)" in err, err


def test_ffn_segments_in_the_recovered_order(tmp_path, capsys):
    from connectome.synth import generate

    ordered = generate((16, 48, 48), (8.0, 8.0, 8.0), seed=21).raw
    stored_at = np.array([0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15])
    a = _npz(tmp_path / "a.npz", ordered=ordered, shuffled=ordered[stored_at])
    runs = {}
    for key, mode in (("ordered", "keep"), ("shuffled", "recover")):
        code = main(["segment", f"{a}#{key}", str(tmp_path / key), "--method", "ffn", "--model", "ffn-synthetic",
                     "--voxel-size", "8", "8", "8", "--section-order", mode, "--workers", "2", "--no-progress",
                     "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        runs[key] = json.loads(captured.out.strip().splitlines()[-1])
    assert runs["shuffled"]["section_order"]["sections"] == np.argsort(stored_at).tolist()
    assert np.array_equal(_read(runs["shuffled"]["segmentation"]), _read(runs["ordered"]["segmentation"])[stored_at])


def test_an_ordered_stack_misaligned_by_60_px_is_kept_and_found_when_shuffled(tmp_path):
    from scipy import ndimage

    with np.load(data_file("cremi_sstem_crop/cremi_train.npz")) as f:
        raw = f["raw"]
    physical = raw[list(section_order(open_volume(f"{data_file('cremi_sstem_crop/cremi_train.npz')}#raw")).order)]
    rng = np.random.default_rng(0)
    moved = np.stack([ndimage.shift(ndimage.rotate(s.astype(np.float32), rng.uniform(-2, 2), reshape=False, order=1,
                                                   mode="reflect"), rng.uniform(-60, 60, 2), order=1, mode="reflect")
                      for s in physical]).clip(0, 255).astype(np.uint8)
    order = section_order(open_volume(_npz(tmp_path / "moved.npz", raw=moved) + "#raw"))
    assert not order.recovered  # 250-pixel sections moved by up to 60 px of a 72-px search
    shuffled = section_order(open_volume(_npz(tmp_path / "mixed.npz", raw=moved[rng.permutation(len(moved))]) + "#raw"))
    assert shuffled.recovered


def test_training_on_a_shuffled_stack_uses_the_recovered_order(tmp_path, capsys):
    crop = data_file("cremi_sstem_crop/cremi_train.npz")
    runs = {}
    for mode in ("auto", "keep"):
        out = tmp_path / mode
        code = main(["train", "affinities", "--raw", f"{crop}#raw", "--labels", f"{crop}#neuron_ids", "--arch",
                     "aniso", "--voxel-size", "40", "4", "4", "--patch", "12", "96", "96", "--iterations", "2",
                     "--name", "m", "--out", str(out), "--section-order", mode])
        err = capsys.readouterr().err
        assert code == 0, err
        runs[mode] = json.loads((out / "m.json").read_text())["provenance"]["data"], err
    (auto, auto_err), (keep, keep_err) = runs["auto"], runs["keep"]
    assert "training on it in the recovered order" in auto_err and "out of order" not in keep_err
    order = auto["section_order"][f"{crop}#raw"]
    assert sorted(order) == list(range(50)) and "section_order" not in keep
    with np.load(crop) as f:
        ids = f["neuron_ids"]
    same = [np.mean((ids[a] == ids[b]) & (ids[a] != 0)) for a, b in zip(order[:-1], order[1:])]
    assert np.mean(same) > 0.75


@pytest.mark.parametrize("order", [[0, 1, 2], [0, 1, 2, 2], [0, 1, 2, 4]])
def test_a_run_config_with_a_wrong_order_is_refused(tmp_path, order):
    from connectome.engine.config import RunConfig, StageConfig
    from connectome.engine.plan import plan_run

    a = _npz(tmp_path / "a.npz", raw=np.zeros((4, 32, 32), np.uint8))
    config = RunConfig(input=a + "#raw", output=str(tmp_path / "out"), voxel_size=(40, 4, 4),
                       stages=[StageConfig(stage="reorder_sections", params={"order": order})])
    with pytest.raises(UserError, match=r"params.order must list each of the 4 sections .* \(a permutation of 0..3\)"):
        plan_run(config)


def test_edge_training_on_a_shuffled_stack_takes_the_recovered_order(tmp_path, capsys):
    crop = data_file("cremi_sstem_crop/cremi_train.npz")
    out = tmp_path / "edges.json"
    code = main(["train", "edges", "--model", "sstem", "--raw", f"{crop}#raw[0:25]", "--labels",
                 f"{crop}#neuron_ids[0:25]", "--val-raw", f"{crop}#raw[25:50]", "--val-labels",
                 f"{crop}#neuron_ids[25:50]", "--steps", "5", "--out", str(out), "--json"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.count("taking its edges in the recovered order") == 2, err
    meta = json.loads(out.read_text())
    assert meta["provenance"]["section_order"] == "auto"
    assert meta["affinity_weights"]["name"] == "sstem.pt" and len(meta["affinity_weights"]["sha1"]) == 40


def test_unrelated_sections_are_left_as_stored(tmp_path):
    from scipy import ndimage

    noise = ndimage.gaussian_filter(np.random.default_rng(5).integers(0, 255, (30, 256, 256)).astype(np.float32),
                                    (0, 3, 3))
    noise = ((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)
    order = section_order(open_volume(_npz(tmp_path / "noise.npz", raw=noise) + "#raw"))
    # any path beats the stored one a little, but its neighbours are not clearly more alike: no evidence, no change
    assert order.kept_pairs < 0.5 and not order.recovered


def test_the_permutation_stages_in_16_blocks_equal_one_block(tmp_path, client):
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run
    from connectome.io import create_volume

    raw = np.random.default_rng(7).integers(0, 255, (8, 64, 64), dtype=np.uint8)
    source = str(tmp_path / "raw")
    stored = create_volume(source, (8, 64, 64), np.uint8, (2, 32, 32), (40.0, 4.0, 4.0))
    stored.write(stored.box, raw)
    order = [3, 0, 6, 1, 7, 2, 5, 4]
    sections = {"order": order}
    results = {}
    for name, block in (("many", (2, 32, 32)), ("one", (8, 64, 64))):
        config = RunConfig(input=source, output=str(tmp_path / name),
                           blocks=BlocksConfig(shape=block, chunk_shape=(2, 32, 32)),
                           stages=[StageConfig(stage="reorder_sections", params=sections),
                                   StageConfig(stage="restore_section_order", params=sections,
                                               inputs={"ordered": "ordered_raw"})])
        reports = execute(plan_run(config), client, progress=False)
        assert [r.blocks for r in reports] == ([16, 16] if name == "many" else [1, 1])
        results[name] = _read(str(tmp_path / name / "ordered_raw")), _read(str(tmp_path / name / "restored"))
    assert np.array_equal(results["many"][0], raw[order]) and np.array_equal(results["one"][0], raw[order])
    assert np.array_equal(results["many"][1], raw) and np.array_equal(results["one"][1], raw)


def test_segment_and_align_name_a_swapped_section_and_keep_the_stored_order(tmp_path, capsys):
    from connectome.affinity.segment import segmentation_config
    from connectome.alignment.chain import alignment_config

    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        raw = f["train_raw"][:20].copy()
    ordered = _npz(tmp_path / "ordered.npz", raw=raw) + "#raw"
    raw[[8, 9]] = raw[[9, 8]]
    swapped = _npz(tmp_path / "swapped.npz", raw=raw) + "#raw"
    for make in (lambda r: segmentation_config(r, str(tmp_path / "seg"), "sstem", voxel_size=(50, 4, 4)),
                 lambda r: alignment_config(r, str(tmp_path / "aligned"), voxel_size=(50, 4, 4))):
        config = make(swapped)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "out of place" in err[0] and "--section-order recover" in err[0], err
        named = int(err[0].split("section ")[1].split(" ")[0])
        assert named in (8, 9), err
        assert "reorder_sections" not in [s.stage for s in config.stages]
        # the --json says so too, also of a config extended as `reconstruct` does; not written to run.json
        expected = {"section_order": {"order": "stored", "misplaced": [named]}}
        assert order_report(config) == expected
        assert order_report(config.model_copy(update={"stages": config.stages[:1]})) == expected
        assert "section_order" not in config.model_dump(mode="json")
        assert order_report(make(ordered)) == {}
        assert capsys.readouterr().err == ""


def test_sections_of_noise_hold_no_order_and_none_is_named(tmp_path, capsys):
    """Random images have no order to be out of: no section is named (before, one in four draws named one, and
    `segment` said so before refusing the float volume), and the refusal is the one line."""
    import connectome.alignment.section_order as so

    rng = np.random.default_rng(0)
    assert all(so.section_order(rng.random((n, 32, 32)).astype(np.float32)).misplaced == ()
               for n in (4, 6, 12, 20) for _ in range(5))
    a = _npz(tmp_path / "f.npz", f=rng.random((4, 32, 32)).astype(np.float32))
    code = main(["segment", a + "#f", str(tmp_path / "out"), "--model", "sstem", "--voxel-size", "50", "4", "4"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "out of place" not in err, err


def test_a_swap_in_a_short_real_stack_is_still_named():
    """The no-order guard asks less of stacks of BAND sections or fewer (compared with their far end, not with
    sections 10 apart): a swapped pair among five real sections is named (here neighbours are 1.64 times as alike
    as the ends, under the 2.0 asked of longer stacks)."""
    import connectome.alignment.section_order as so

    with np.load(data_file("isbi2012/isbi2012.npz")) as f:
        raw = f["train_raw"][8:13].copy()
    raw[[1, 2]] = raw[[2, 1]]
    assert so.section_order(raw).misplaced in ((1,), (2,))
