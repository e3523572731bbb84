"""FFN agglomeration: contacts counted once per face pair in any tiling, one decision per pair, a split
object merged and touching objects kept apart by the hand-set network, 8 blocks == one."""

import json

import numpy as np

from connectome.cli.main import main
from connectome.cluster.client import ClusterConfig
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import execute, plan_run
from connectome.ffn.agglomeration import AgglomerationSettings, chosen_decisions, contacts, decide, fill_from_seed
from connectome.ffn.canvas import CanvasSettings
from connectome.io import create_volume, open_volume

from ffn_handset import handset_model, saved_handset_model


def _read(address):
    vol = open_volume(address)
    return vol.read(vol.box)


def test_contacts_of_tiles_add_up_to_the_whole_volume_ones():
    rng = np.random.default_rng(3)
    seg = rng.integers(0, 5, (6, 9, 10)).astype(np.uint64)
    pairs, counts, _ = contacts(seg, (0, 0, 0))
    whole = dict(zip(map(tuple, pairs.tolist()), counts.tolist()))
    total: dict = {}
    for z0 in (0, 3):
        for y0 in (0, 4):
            for x0 in (0, 5):
                start = (z0, y0, x0)
                has_lower = tuple(int(o > 0) for o in start)
                near = seg[z0 - has_lower[0]:z0 + 3, y0 - has_lower[1]:y0 + (4 if y0 == 0 else 5),
                           x0 - has_lower[2]:x0 + 5]
                p, c, points = contacts(near, has_lower)
                for pair, count, point in zip(map(tuple, p.tolist()), c.tolist(), points.tolist()):
                    total[pair] = total.get(pair, 0) + count
                    assert all(q >= h for q, h in zip(point, has_lower))  # a contact point inside the tile
    assert total == whole
    assert all(a < b for a, b in whole)


def test_each_pair_is_decided_by_the_block_with_most_contact():
    tables = {
        0: {"pairs": np.array([[1, 2], [3, 4]], np.uint64), "counts": np.array([5, 9]), "agree": np.array([1, 0])},
        1: {"pairs": np.array([[1, 2], [3, 4]], np.uint64), "counts": np.array([7, 9]), "agree": np.array([0, 1])},
        2: {"pairs": np.zeros((0, 2), np.uint64), "counts": np.zeros(0, np.int64), "agree": np.zeros(0, bool)},
    }
    # (1, 2): block 1 has more contact and says no; (3, 4): a tie, block 0 (the lower index) says no
    assert chosen_decisions(tables).tolist() == []
    tables[1]["agree"] = np.array([1, 1])
    assert chosen_decisions(tables).tolist() == [[1, 2]]


def _compartments():
    """Bright compartments split by dark walls (y = 20, x = 41), and an over-segmentation of them: each
    compartment cut in two at z = 8 (the cut the agglomeration must undo), walls given to their neighbours."""
    raw = np.full((16, 64, 64), 255, np.uint8)
    raw[:, 20, :] = 0
    raw[:, :, 41] = 0
    y, x = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    cell = (y > 20).astype(np.uint64) * 2 + (x > 41) + 1
    seg = np.repeat(cell[None], 16, axis=0)
    seg[8:] += 4  # the false split
    return raw, seg


def test_decide_merges_a_split_object_and_keeps_walls():
    net, info = handset_model()
    raw, seg = _compartments()
    fill = fill_from_seed(net, info, CanvasSettings(0.9, 0.6, 5), "cpu")
    settings = AgglomerationSettings((6, 10, 10), agree=0.5, min_contact=10)
    agree, a, b = decide(fill, raw, seg, (1, 5), (8, 10, 10), settings)  # across the false split
    assert agree and a > 0.9 and b > 0.9
    agree, a, b = decide(fill, raw, seg, (1, 3), (4, 21, 10), settings)  # across the dark wall y = 20
    assert not agree and a < 0.1 and b < 0.1


def test_ffn_agglomeration_stages_eight_blocks_equal_one(tmp_path, client):
    model = saved_handset_model(tmp_path)
    raw, seg = _compartments()
    r = create_volume(str(tmp_path / "in" / "raw"), raw.shape, np.uint8, (8, 32, 32), (8, 8, 8))
    r.write(r.box, raw)
    s = create_volume(str(tmp_path / "in" / "segments"), seg.shape, np.uint64, (8, 32, 32), (8, 8, 8))
    s.write(s.box, seg)
    results = {}
    for label, block in (("eight", (8, 32, 32)), ("one", (16, 64, 64))):
        config = RunConfig(input=r.address, output=str(tmp_path / label),
                           blocks=BlocksConfig(shape=block, chunk_shape=(8, 32, 32)), cluster=ClusterConfig(),
                           stages=[StageConfig(stage="ffn_agglomerate", inputs={"ffn_segments": s.address},
                                               params={"model": model, "radius": [6, 10, 10]}),
                                   StageConfig(stage="ffn_merge", inputs={"ffn_segments": s.address})])
        execute(plan_run(config), client, progress=False)
        results[label] = _read(str(tmp_path / label / "segmentation"))
    merged = results["one"]
    np.testing.assert_array_equal(results["eight"], merged)
    # the false split at z = 8 is undone, the walls stay: 4 compartments, each one segment
    assert np.unique(merged).size == 4
    for c in range(1, 5):
        assert np.unique(merged[seg % 4 == c % 4]).size == 1


def test_segment_ffn_agglomerate_command(tmp_path, capsys, client):
    model = saved_handset_model(tmp_path)
    raw, _ = _compartments()
    r = create_volume(str(tmp_path / "in" / "raw"), raw.shape, np.uint8, (16, 64, 64), (8, 8, 8))
    r.write(r.box, raw)
    argv = ["segment", r.address, str(tmp_path / "out"), "--method", "ffn", "--model", model, "--ffn-agglomerate",
            "--block-shape", "16", "64", "64", "--workers", "1", "--no-progress", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [s["stage"] for s in out["stages"]] == ["ffn", "ffn_reconcile", "ffn_relabel", "ffn_agglomerate",
                                                   "ffn_merge_step", "ffn_merge"]
    segments, final = _read(str(tmp_path / "out" / "ffn_segments")), _read(out["segmentation"])
    # one FFN pass leaves this volume in 6 pieces (an object stops at its step limit); agglomeration joins
    # the pieces of each compartment and nothing across the walls
    assert np.unique(segments).size >= 4
    _, cells = _compartments()
    cells %= 4
    assert np.unique(final).size == 4
    walls = raw == 0
    for c in range(4):
        assert np.unique(final[(cells == c) & ~walls]).size == 1
    pairs = np.unique(np.stack([segments.ravel(), final.ravel()]), axis=1)
    assert pairs.shape[1] == np.unique(segments).size  # merges only: every piece lies in one final segment


def test_the_agreement_threshold_is_the_models_unless_given(tmp_path, capsys):
    """`agree` defaults to the model's json value (`agglomeration.agree`, written by `save_model`), 0.8 for a json
    without one (whose runs, made when 0.8 was the stage's default, still resume); `--ffn-agree` overrides it, and
    is refused in one line without `--ffn-agglomerate` or outside (0, 1]."""
    from connectome.engine.plan import plan_run
    from connectome.ffn.registry import read_info
    from connectome.ffn.segment import ffn_config

    raw = create_volume(str(tmp_path / "in" / "raw"), (16, 64, 64), np.uint8, (16, 64, 64), (8, 8, 8))
    raw.write(raw.box, _compartments()[0])
    chosen = saved_handset_model(tmp_path)
    meta = json.loads((tmp_path / "ffn-handset.json").read_text())
    assert meta["agglomeration"] == {"agree": 0.8}  # save_model writes it
    meta["agglomeration"] = {"agree": 0.95}
    (tmp_path / "ffn-handset.json").write_text(json.dumps(meta))
    assert read_info(chosen).agree == 0.95
    older = saved_handset_model(tmp_path, name="older")
    meta = json.loads((tmp_path / "older.json").read_text())
    del meta["agglomeration"]
    (tmp_path / "older.json").write_text(json.dumps(meta))

    def stage(model, **kw):
        config = ffn_config(raw.address, str(tmp_path / "o"), model, (16, 64, 64), agglomerate=True, **kw)
        return next(p.stage for p in plan_run(config).stages if p.stage.name == "ffn_agglomerate")

    assert stage(chosen).agree == 0.95 and stage(chosen).fingerprint()["params"]["agree"] == 0.95
    assert stage(chosen, agree=0.5).agree == 0.5 and stage(chosen, agree=0.5).fingerprint()["params"]["agree"] == 0.5
    assert stage(older).agree == 0.8
    assert stage(older).fingerprint() == stage(older, agree=0.8).fingerprint()  # as recorded before
    for extra, expected in ((["--ffn-agree", "0.9"], "--ffn-agree 0.9: for --ffn-agglomerate, which is not given"),
                            (["--ffn-agglomerate", "--ffn-agree", "0"], "--ffn-agree")):
        argv = ["segment", raw.address, str(tmp_path / "cli"), "--method", "ffn", "--model", chosen, *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
        assert not (tmp_path / "cli").exists()
