"""The class table, the partial-label (masked) cross-entropy, and a training run whose loss falls."""

import numpy as np
import torch

from connectome.synth import codes as K
from connectome.tissue import classes as T
from connectome.tissue.loss import masked_cross_entropy
from connectome.tissue.sources import epfl_target, synth_target, vnc_target


def test_codes_match_the_synthetic_tissue_volume():
    assert (T.NEUROPIL, T.VESSEL, T.SOMA, T.MYELIN, T.DEFECT) == (
        K.TISSUE_NEUROPIL, K.TISSUE_VESSEL, K.TISSUE_SOMA, K.TISSUE_MYELIN, K.TISSUE_DEFECT)
    assert [T.NAMES[c] for c in range(5)] == [K.TISSUE_NAMES[c] for c in range(5)]
    assert all(T.code_of(n) in range(T.N_CLASSES) for n in T.DEFAULT_EXCLUDE)


def test_label_sets_of_each_source():
    nine = np.array([[0, 128, 159, 191, 223, 255]], np.uint8)
    t = vnc_target(nine)[0]
    assert t[2] == T.bits(T.GLIA) and t[3] == T.bits(T.MITOCHONDRION) and t[5] == T.bits(T.NEUROPIL)
    assert t[0] == t[1] == T.bits(T.NEUROPIL, T.GLIA, T.MITOCHONDRION)
    e = epfl_target(np.array([True, False]))
    assert e[0] == T.bits(T.MITOCHONDRION)
    assert e[1] == T.bits(T.NEUROPIL, T.GLIA, T.MYELIN)  # CA1 neuropil slices: no soma, vessel or defect
    tissue = np.array([0, 0, 0, 1, 2, 4], np.uint8)
    organelles = np.array([0, K.O_MITOCHONDRION, 0, K.O_MITOCHONDRION, 0, 0], np.uint8)
    comps = np.array([K.C_AXON, K.C_AXON, K.C_GLIA, K.C_VESSEL_WALL, K.C_SOMA, K.C_AXON], np.uint8)
    s = synth_target(tissue, organelles, comps)
    assert s.tolist() == [T.bits(c) for c in (T.NEUROPIL, T.MITOCHONDRION, T.GLIA, T.VESSEL, T.SOMA, T.DEFECT)]


def _set_nll(logits: torch.Tensor, allowed: list[int]) -> torch.Tensor:
    p = torch.softmax(logits, dim=1)
    return -torch.log(p[:, allowed].sum(1)).mean()


def test_masked_cross_entropy_ignores_the_classes_a_source_does_not_label():
    torch.manual_seed(0)
    logits = torch.randn(4, T.N_CLASSES, 8, 8, dtype=torch.float64)
    not_mito = T.ALL & ~T.bits(T.MITOCHONDRION, T.DEFECT)  # EPFL: "not a mitochondrion"
    target = torch.full((4, 8, 8), not_mito, dtype=torch.uint8)
    loss = masked_cross_entropy(logits, target)
    allowed = [c for c in range(T.N_CLASSES) if not_mito >> c & 1]
    torch.testing.assert_close(loss, _set_nll(logits, allowed))
    # moving probability between classes inside the allowed set (same total) leaves the loss unchanged ...
    moved = logits.clone()
    a, b = allowed[0], allowed[1]
    moved[:, a], moved[:, b] = logits[:, b], logits[:, a]
    torch.testing.assert_close(masked_cross_entropy(moved, target), loss)
    # ... while a one-class (ordinary) cross-entropy sees it
    single = torch.full_like(target, T.bits(a))
    assert not torch.isclose(masked_cross_entropy(moved, single), masked_cross_entropy(logits, single))
    # and no gradient prefers one allowed class over another beyond their current share
    logits.requires_grad_(True)
    masked_cross_entropy(logits, target).backward()
    g = logits.grad
    p = torch.softmax(logits.detach(), 1)
    ratio = g[:, allowed] / p[:, allowed]
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))


def test_unlabelled_and_uninformative_pixels_carry_no_loss():
    torch.manual_seed(1)
    logits = torch.randn(1, T.N_CLASSES, 4, 4, dtype=torch.float64)
    target = torch.zeros(1, 4, 4, dtype=torch.uint8)
    target[0, :2] = T.bits(T.GLIA)
    base = masked_cross_entropy(logits, target)
    noisy = logits.clone()
    noisy[0, :, 2:] = 50 * torch.randn(T.N_CLASSES, 2, 4, dtype=torch.float64)  # rows 2-3 unlabelled
    torch.testing.assert_close(masked_cross_entropy(noisy, target), base)
    target[0, 2:] = T.ALL  # every class allowed: no information either
    torch.testing.assert_close(masked_cross_entropy(noisy, target), base)
    torch.testing.assert_close(base, _set_nll(logits[:, :, :2], [T.GLIA]))


def test_training_loss_falls_on_a_tiny_synthetic_set(tmp_path):
    from connectome.synth import Defects, TissueOptions, generate
    from connectome.tissue.sources import Sections
    from connectome.tissue.training import TissueTrainSettings, train_tissue

    v = generate((3, 128, 128), (40.0, 5.0, 5.0), seed=3, defects=Defects(missing=True),
                 tissue=TissueOptions(myelinated_axons=1))
    src = Sections("tiny", v.raw, synth_target(v.tissue, v.organelles, v.compartments), (40.0, 5.0, 5.0))
    settings = TissueTrainSettings(name="tiny", out=str(tmp_path), data_dir="", iterations=150, batch_size=4,
                                   patch=64, source_weights=(1.0,), levels=3, lr=3e-3, val_every=150, threads=1)
    summary = train_tissue(settings, [src], [src], log=lambda *a: None)
    history = __import__("json").loads((tmp_path / "tiny-history.json").read_text())["loss"]
    assert len(history) == 150
    first, last = np.mean(history[:20]), np.mean(history[-20:])
    assert last < 0.75 * first, (first, last)
    assert (tmp_path / "tiny.pt").is_file() and summary["validation"]["iteration"] == 150
    meta = __import__("json").loads((tmp_path / "tiny.json").read_text())
    assert meta["kind"] == "tissue" and meta["classes"] == list(T.NAMES)
    # --init resumes from those weights: its first losses are the trained ones, not a fresh network's
    again = TissueTrainSettings(name="again", out=str(tmp_path / "again"), data_dir="", iterations=10, batch_size=4,
                                patch=64, source_weights=(1.0,), levels=3, lr=3e-4, val_every=10, threads=1,
                                init=str(tmp_path / "tiny.pt"))
    train_tissue(again, [src], [src], log=lambda *a: None)
    resumed = __import__("json").loads((tmp_path / "again" / "again-history.json").read_text())["loss"]
    assert np.mean(resumed) < 0.5 * (first + last), (np.mean(resumed), first, last)
    # the starting weights are validated first and stay the result unless beaten: a step at a ruinous rate
    # (the default five levels asked for, the start's three trained) keeps them exactly
    ruin = TissueTrainSettings(name="ruin", out=str(tmp_path / "ruin"), data_dir="", iterations=2, batch_size=4,
                               patch=64, source_weights=(1.0,), lr=50.0, val_every=1, threads=1,
                               init=str(tmp_path / "tiny.pt"))
    summary = train_tissue(ruin, [src], [src], log=lambda *a: None)
    kept = __import__("json").loads((tmp_path / "ruin" / "ruin-history.json").read_text())["validation"]
    assert [h["iteration"] for h in kept] == [0, 1, 2] and summary["validation"]["iteration"] == 0
    assert kept[0]["score"] > max(h["score"] for h in kept[1:])
    ruined, start = (__import__("torch").load(p, weights_only=True) for p in (tmp_path / "ruin" / "ruin.pt",
                                                                               tmp_path / "tiny.pt"))
    assert ruined.keys() == start.keys() and all(ruined[k].equal(start[k]) for k in start)
    assert __import__("json").loads((tmp_path / "ruin" / "ruin.json").read_text())["provenance"]["settings"][
        "levels"] == 3


