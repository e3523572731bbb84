"""Synapses as a precomputed annotation layer and class / synapse counts as segment properties, made by
`connectome view` from synapses.csv and segments.csv; the files are read back with a decoder written
from Neuroglancer's annotation spec (not the writer's code)."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from connectome.cli.main import main
from connectome.neurites.types import read_segments
from connectome.synapses.table import read_synapses


def _decode_one(data: bytes, n_props: int, n_rels: int) -> tuple[tuple, tuple, list[list[int]]]:
    """by_id: x y z float32, float32 properties, then per relationship uint32 count + uint64 ids."""
    position = struct.unpack_from("<3f", data, 0)
    props = struct.unpack_from(f"<{n_props}f", data, 12)
    at, related = 12 + 4 * n_props, []
    for _ in range(n_rels):
        (count,) = struct.unpack_from("<I", data, at)
        related.append(list(struct.unpack_from(f"<{count}Q", data, at + 4)))
        at += 4 + 8 * count
    assert at == len(data)
    return position, props, related


def _decode_many(data: bytes, n_props: int) -> dict[int, tuple]:
    """Spatial / relationship index: uint64 count, count x (position, properties), count x uint64 id."""
    (count,) = struct.unpack_from("<Q", data, 0)
    size = 12 + 4 * n_props
    ids = struct.unpack_from(f"<{count}Q", data, 8 + count * size)
    assert 8 + count * (size + 8) == len(data)
    return {ids[i]: struct.unpack_from(f"<{3 + n_props}f", data, 8 + i * size) for i in range(count)}


def _decode_sharded(directory, spec: dict) -> dict[int, bytes]:
    """Every key -> value of a sharded index (neuroglancer_uint64_sharded_v1, raw encodings), found by
    reading each shard's index and all its minishard indices (no hashing needed)."""
    assert spec["minishard_index_encoding"] == "raw" and spec["data_encoding"] == "raw"
    n_mini = 2 ** spec["minishard_bits"]
    base = 16 * n_mini  # the shard index: [start, end) of each minishard index, relative to its end
    names = sorted(os.listdir(directory))
    assert len(names) == 2 ** spec["shard_bits"] and all(n.endswith(".shard") for n in names)
    values = {}
    for name in names:
        data = (directory / name).read_bytes()
        for m in range(n_mini):
            start, end = struct.unpack_from("<2Q", data, 16 * m)
            n = (end - start) // 24
            table = np.frombuffer(data, "<u8", 3 * n, base + start).reshape(3, n)
            keys, at = np.cumsum(table[0]), 0
            assert (keys[1:] > keys[:-1]).all()  # each minishard's keys ascending (a wrapped delta would not be)
            for key, gap, size in zip(keys, table[1], table[2]):
                at += int(gap)  # starts: delta from the previous value's end
                assert int(key) not in values
                values[int(key)] = data[base + at:base + at + int(size)]
                at += int(size)
    return values


@pytest.fixture(scope="module")
def viewed(segmented_output, tmp_path_factory):
    state = tmp_path_factory.mktemp("state") / "state.json"
    assert main(["view", str(segmented_output), "--state", str(state), "--source-url", "gs://lab/run"]) == 0
    return segmented_output, json.loads(state.read_text())


def test_annotation_files_decode_to_the_synapse_table(viewed):
    out, _ = viewed
    table = read_synapses(str(out / "synapses.csv"))
    root = out / "synapse_annotations"
    info = json.loads((root / "info").read_text())
    assert info["@type"] == "neuroglancer_annotations_v1" and info["annotation_type"] == "point"
    assert [p["id"] for p in info["properties"]] == ["score", "partner_score"]
    rels = {r["id"]: r["key"] for r in info["relationships"]}
    specs = {r["id"]: r["sharding"] for r in info["relationships"]}
    names = [r["id"] for r in info["relationships"]]
    assert set(rels) == {"pre_synaptic_cell", "post_synaptic_cell"}
    expected = {}
    by_id = _decode_sharded(root / info["by_id"]["key"], info["by_id"]["sharding"])
    assert sorted(by_id) == sorted(int(s) for s in table["id"])
    for i, sid in enumerate(table["id"]):
        position, props, related = _decode_one(by_id[int(sid)], 2, 2)
        np.testing.assert_allclose(position, [table["x"][i] + 0.5, table["y"][i] + 0.5, table["z"][i] + 0.5])
        np.testing.assert_allclose(props, [table["score"][i], table["partner_score"][i]], rtol=1e-5)
        partners = dict(zip(names, related))
        assert partners == {"pre_synaptic_cell": [int(table["pre"][i])], "post_synaptic_cell": [int(table["post"][i])]}
        expected[int(sid)] = (*position, *props)
    # the spatial index holds every synapse once, in the cell that contains it
    level = info["spatial"][0]
    # the grid tiles the bounds exactly, as the spec asks (it was taken from the occupied cells)
    np.testing.assert_allclose(np.array(level["grid_shape"]) * np.array(level["chunk_size"]),
                               np.array(info["upper_bound"]) - np.array(info["lower_bound"]))
    seen: dict[int, tuple] = {}
    for name in os.listdir(root / level["key"]):
        cell = np.array([int(c) for c in name.split("_")])
        assert (cell < level["grid_shape"]).all()
        found = _decode_many((root / level["key"] / name).read_bytes(), 2)
        assert len(found) <= level["limit"]
        lo = np.array(info["lower_bound"]) + cell * np.array(level["chunk_size"])
        for sid, values in found.items():
            assert (np.array(values[:3]) >= lo).all() and (np.array(values[:3]) < lo + level["chunk_size"]).all()
            assert sid not in seen
            seen[sid] = values
    assert seen.keys() == expected.keys()
    for sid, values in seen.items():
        np.testing.assert_allclose(values, expected[sid])
    # the relationship indices: a segment's file lists exactly the synapses it is partner of
    for name, column in (("pre_synaptic_cell", "pre"), ("post_synaptic_cell", "post")):
        index = _decode_sharded(root / rels[name], specs[name])
        assert sorted(index) == sorted(int(s) for s in np.unique(table[column]))
        for segment in np.unique(table[column]):
            found = _decode_many(index[int(segment)], 2)
            assert sorted(found) == sorted(int(s) for s in table["id"][table[column] == segment])


def test_segment_properties_gain_class_and_synapse_counts(viewed):
    out, _ = viewed
    inline = json.loads((out / "segment_properties" / "info").read_text())["inline"]
    props = {p["id"]: p for p in inline["properties"]}
    ids = [int(i) for i in inline["ids"]]
    segments = read_segments(str(out / "segments.csv"))
    truth = dict(zip(segments["id"].astype(int), segments["class"]))
    tags = props["class"]["tags"]
    assert [tags[v[0]] for v in props["class"]["values"]] == [truth[i] for i in ids]
    table = read_synapses(str(out / "synapses.csv"))
    for name, column in (("synapses_out", "pre"), ("synapses_in", "post")):
        assert props[name]["values"] == [int((table[column] == i).sum()) for i in ids]
    assert sum(props["synapses_out"]["values"]) == len(table["id"]) > 0
    for name in ("radius_nm", "branch_share"):  # the segment table's morphology, per id
        column = dict(zip(segments["id"].astype(int), np.nan_to_num(segments[name], nan=-1.0)))
        np.testing.assert_allclose(props[name]["values"], [column[i] for i in ids], rtol=1e-6)
    assert len(set(props["branch_share"]["values"])) > 1 and -1.0 in props["branch_share"]["values"]
    assert "size" in props  # still there


def test_state_shows_the_synapse_layer(viewed):
    _, state = viewed
    layer = next(x for x in state["layers"] if x["name"] == "synapses")
    assert layer["type"] == "annotation" and layer["source"] == "precomputed://gs://lab/run/synapse_annotations"
    assert layer["linkedSegmentationLayer"] == {"pre_synaptic_cell": "segmentation",
                                                "post_synaptic_cell": "segmentation"}


def test_a_newer_table_is_written_again(viewed, tmp_path):
    out, _ = viewed
    info = out / "synapse_annotations" / "info"
    before = info.stat().st_mtime
    assert main(["view", str(out), "--state", str(tmp_path / "s.json"), "--source-url", "gs://x"]) == 0
    assert info.stat().st_mtime == before  # unchanged table: nothing rewritten
    table = (out / "synapses.csv").stat().st_mtime
    os.utime(info, (table - 10, table - 10))  # as if synapses.csv had been made again after the layer
    assert main(["view", str(out), "--state", str(tmp_path / "s.json"), "--source-url", "gs://x"]) == 0
    assert info.stat().st_mtime >= table


def test_positions_are_placed_at_the_volumes_world_offset(viewed, tmp_path):
    """A volume that does not start at the world's origin (a section range, a precomputed voxel_offset): the
    points sit where Neuroglancer draws its voxels, and a layer placed at another offset is written again."""
    import shutil

    from connectome.export.annotations import refresh_annotations

    out, _ = viewed
    shutil.copy(out / "synapses.csv", tmp_path / "synapses.csv")
    table = read_synapses(str(tmp_path / "synapses.csv"))

    def positions() -> dict[int, np.ndarray]:
        info = json.loads((tmp_path / "synapse_annotations" / "info").read_text())
        by_id = _decode_sharded(tmp_path / "synapse_annotations" / "by_id", info["by_id"]["sharding"])
        return {sid: np.array(_decode_one(data, 2, 2)[0]) for sid, data in by_id.items()}

    for offset in ((20, 3, 0), (0, 0, 0)):
        assert refresh_annotations(str(tmp_path), (40.0, 4.0, 4.0), offset) is not None
        found = positions()
        for i, sid in enumerate(table["id"]):
            expected = [table["x"][i] + 0.5 + offset[2], table["y"][i] + 0.5 + offset[1], table["z"][i] + 0.5 + offset[0]]
            np.testing.assert_allclose(found[int(sid)], expected)


def _random_table(n: int, seed: int) -> dict[str, np.ndarray]:
    """Synapses with shared positions, partners 0 (outside every segment), partner ids past 2**63 and large ids."""
    rng = np.random.default_rng(seed)
    rows = {"z": rng.integers(0, 30, n), "y": rng.integers(0, 500, n), "x": rng.integers(0, 400, n)}
    same = rng.random(n) < 0.2
    for axis in ("z", "y", "x"):
        rows[axis][same] = rows[axis][0]
    for column in ("pre", "post"):
        segments = rng.integers(1, 300, n).astype(np.uint64)
        big = rng.random(n) < 0.2
        segments[big] = np.uint64(2**64 - 1) - rng.integers(0, 3, int(big.sum())).astype(np.uint64)
        segments[rng.random(n) < 0.1] = 0
        rows[column] = segments
    rows["score"], rows["partner_score"] = rng.random(n), rng.random(n)
    rows["id"] = np.uint64(2**64 - 1) - rng.permutation(n).astype(np.uint64) * np.uint64(7919)
    return rows


@pytest.mark.parametrize("shards", ["default", "many"])
def test_every_sharded_entry_decodes_to_its_own_synapses(tmp_path, monkeypatch, shards):
    """Each by_id and rel_pre / rel_post entry looked up key by key as a reader does (hash, shard, minishard index,
    value: `sharding.read_value`) holds exactly its synapse, or its segment's synapses in table order, so an entry
    shifted by a byte, cut short or filed under another key or minishard fails; 'many' forces several shards of
    several minishards."""
    from connectome.export import sharding
    from connectome.export.annotations import write_annotations

    if shards == "many":
        original = sharding.sharding_spec
        monkeypatch.setattr(sharding, "sharding_spec",
                            lambda n, total: original(n, total, shard_bytes=4096, minishard_keys=4))
    n, offset = 1500, (2, 0, 7)
    table = _random_table(n, 3)
    root = tmp_path / "layer"
    assert write_annotations(str(root), table, (40.0, 4.0, 4.0), offset) == n
    info = json.loads((root / "info").read_text())
    specs = {"by_id": info["by_id"]["sharding"], **{r["key"]: r["sharding"] for r in info["relationships"]}}
    if shards == "many":
        assert all(s["shard_bits"] >= 3 and s["minishard_bits"] >= 2 for s in specs.values())
    ids = table["id"]
    expected = np.zeros(n, [("position", "<f4", 3), ("score", "<f4"), ("partner_score", "<f4")])
    expected["position"] = np.stack([table["x"] + offset[2], table["y"] + offset[1], table["z"] + offset[0]], 1) + 0.5
    expected["score"], expected["partner_score"] = table["score"], table["partner_score"]
    stored = _decode_sharded(root / "by_id", specs["by_id"])
    assert sorted(stored) == sorted(int(i) for i in ids)
    for i in range(n):
        found = sharding.read_value(str(root / "by_id"), int(ids[i]), specs["by_id"])
        assert found is not None and found[0] == stored[int(ids[i])]
        assert found[0] == (expected[i:i + 1].tobytes() + struct.pack("<IQ", 1, int(table["pre"][i]))
                            + struct.pack("<IQ", 1, int(table["post"][i])))
    for key, column in (("rel_pre", "pre"), ("rel_post", "post")):
        segments = table[column]
        related = [int(s) for s in np.unique(segments) if s != 0]
        assert sorted(_decode_sharded(root / key, specs[key])) == related
        assert sharding.read_value(str(root / key), 0, specs[key]) is None
        for segment in related:
            found = sharding.read_value(str(root / key), segment, specs[key])
            assert found is not None
            members = np.flatnonzero(segments == np.uint64(segment))
            assert found[0] == (struct.pack("<Q", members.size) + expected[members].tobytes()
                                + ids[members].astype("<u8").tobytes())


def test_the_vectorised_hash_is_murmurhash3_x86_128():
    """The shard hash of all keys at once against the reference implementation, key by key."""
    from cloudvolume.datasource.precomputed import mmh3

    from connectome.export import sharding

    rng = np.random.default_rng(0)
    keys = [0, 1, 255, 256, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
    keys += [int(k) for k in rng.integers(0, 2**64 - 1, 1000, dtype=np.uint64, endpoint=True)]
    reference = [mmh3.hash64(np.uint64(k).tobytes(), x64arch=False)[0] & (2**64 - 1) for k in keys]
    spec = sharding.sharding_spec(1, 1)
    assert sharding.hashed(keys, spec).tolist() == reference
    assert sharding.hashed(np.array(keys, np.uint64), spec).tolist() == reference


def test_a_shard_keeps_each_prefix_just_before_its_value(tmp_path):
    """encode_shard as the meshes use it: (key, value, prefix), a value found by key with its prefix in front."""
    from connectome.export import sharding

    rng = np.random.default_rng(1)
    spec = {**sharding.sharding_spec(1, 1), "minishard_bits": 3}
    keys = [int(k) for k in rng.integers(1, 2**64 - 1, 200, dtype=np.uint64)]
    entries = [(k, rng.bytes(int(rng.integers(0, 40))), rng.bytes(int(rng.integers(0, 3)) * 7)) for k in keys]
    (tmp_path / sharding.shard_name(0, spec)).write_bytes(sharding.encode_shard(entries, spec))
    data = (tmp_path / sharding.shard_name(0, spec)).read_bytes()
    for key, value, prefix in entries:
        found = sharding.read_value(str(tmp_path), key, spec)
        assert found is not None and found[0] == value
        assert data[found[2] - len(prefix):found[2]] == prefix
    assert sharding.read_value(str(tmp_path), 0, spec) is None
