"""Fragments within sections (`in_plane`, serial-section models): no basin crosses a section, the merge
still joins objects through sections, and 27 blocks give the segmentation of one block."""

import numpy as np
from test_edge_classifier import noisy_affinities  # affinities of labels plus noise

from connectome.affinity.edge_classifier import load_classifier
from connectome.affinity.encoding import affinities_as_uint8
from connectome.affinity.segment import segmentation_config
from connectome.affinity.validation import fragments_and_tables
from connectome.io import create_volume, open_volume


def sections_per_id(labels: np.ndarray) -> np.ndarray:
    """For each non-zero id, the number of sections it occurs in."""
    z = np.broadcast_to(np.arange(labels.shape[0])[:, None, None], labels.shape)
    pairs = np.unique(np.stack([labels.ravel(), z.ravel()]), axis=1)
    pairs = pairs[:, pairs[0] != 0]
    return np.unique(pairs[0], return_counts=True)[1]


def _run(root, name, affs_address, block, client, in_plane):
    from connectome.cluster.client import ClusterConfig
    from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
    from connectome.engine.plan import execute, plan_run

    inputs = {"affinities": affs_address}
    config = RunConfig(input=affs_address, output=str(root / name), cluster=ClusterConfig(),
                       blocks=BlocksConfig(shape=block, chunk_shape=(4, 16, 16)),
                       stages=[StageConfig(stage="fragments", inputs=inputs, params={"in_plane": in_plane}),
                               StageConfig(stage="agglomerate", inputs=inputs),
                               StageConfig(stage="relabel", params={"threshold": 0.5})])
    execute(plan_run(config), client, progress=False)
    out = {}
    for key in ("fragments", "segmentation"):
        vol = open_volume(str(root / name / key))
        out[key] = vol.read(vol.box)
    return out


def test_in_plane_fragments_stay_in_their_section_and_blocks_equal_one(tmp_path, client):
    from connectome.synth import generate

    labels = generate((12, 48, 48), (8.0, 8.0, 8.0), seed=7).labels
    affs = affinities_as_uint8(noisy_affinities(labels, 0.25, 3))
    vol = create_volume(str(tmp_path / "affs"), labels.shape, np.uint8, (4, 16, 16), (40, 4, 4), channels=3)
    vol.write(vol.box, affs)
    many = _run(tmp_path, "many", vol.address, (4, 16, 16), client, True)  # 3 x 3 x 3 blocks
    one = _run(tmp_path, "one", vol.address, (12, 48, 48), client, True)
    assert sections_per_id(many["fragments"]).max() == 1 and sections_per_id(one["fragments"]).max() == 1
    # the merge joins fragments through sections: most voxels lie in segments that span several
    seg = one["segmentation"]
    ids, sizes = np.unique(seg[seg != 0], return_counts=True)
    assert sizes[sections_per_id(seg) > 1].sum() > 0.8 * sizes.sum()
    pairs = np.unique(np.stack([many["segmentation"].ravel(), one["segmentation"].ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]  # one partition
    # without the option, basins cross sections (so the option is what keeps them in one)
    three_d, _ = fragments_and_tables(affs)
    assert sections_per_id(three_d).max() > 1
    in_plane, _ = fragments_and_tables(affs, in_plane=True)
    assert sections_per_id(in_plane).max() == 1


def test_shipped_models_segment_with_their_validated_fragments_and_scoring(tmp_path):
    sstem = segmentation_config("raw.zarr", str(tmp_path / "o"), "sstem", voxel_size=(40, 4, 4))
    fib = segmentation_config("raw.zarr", str(tmp_path / "o"), "fib-10nm", voxel_size=(10, 10, 10))
    assert next(s for s in sstem.stages if s.stage == "fragments").params == {"in_plane": True}
    assert next(s for s in fib.stages if s.stage == "fragments").params == {}
    # fib-10nm, synthetic (since 2026-12-01) and sstem (since session 13) merge by their edge classifiers by
    # default, at the classifier's threshold
    for name, config in [("fib-10nm", fib), ("sstem", sstem),
                         ("synthetic", segmentation_config("raw.zarr", str(tmp_path / "o"), "synthetic",
                                                           voxel_size=(8, 8, 8)))]:
        agglomerate = next(s for s in config.stages if s.stage == "agglomerate").params
        assert agglomerate["scoring"] == "learned" and agglomerate["edge_model"].endswith(f"{name}-edges.json")
        relabel = next(s for s in config.stages if s.stage == "relabel").params
        assert relabel["threshold"] == load_classifier(agglomerate["edge_model"]).threshold
