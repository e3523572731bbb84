"""Every shipped stage: its output computed in small blocks equals its output computed in one block.

Each stage runs on the same stored inputs (made once, in one block) twice: in 8+ blocks and in one.
A newly registered stage must be added to CASES, so none ships without this check.
"""

import numpy as np
import pytest

from connectome.cluster.client import ClusterConfig
from connectome.engine.config import BlocksConfig, RunConfig, StageConfig
from connectome.engine.plan import execute, plan_run
from connectome.engine.registry import REGISTRY, discover, stage_class
from connectome.io import open_volume

SHAPE = (16, 96, 96)
SMALL = (8, 32, 32)  # 2 x 3 x 3 blocks

# stage -> (the stages that make its inputs, its output to compare, how to compare)
CASES = {
    "copy": ([], "copy", "exact"),
    "normalize": ([], "normalized", "exact"),
    "affinities": ([], "affinities", "one grey level"),  # float summation order differs with the tile
    "fragments": (["affinities"], "fragments", "cut at faces"),  # whole-volume basins, cut at block faces
    "agglomerate": (["affinities", "fragments"], None, "tables"),  # checked through relabel
    "relabel": (["affinities", "fragments", "agglomerate"], "segmentation", "partition"),
    # the FFN chain runs far slower; its blockwise == one-block check is tests/ffn/test_segment_ffn.py
    "ffn": ([], None, "tests/ffn"),
    "ffn_relabel": (["ffn"], None, "tests/ffn"),
    # meshes joined from blocks == the one-block mesh, skeletons joined into one: tests/morphology
    "meshes": ([], None, "tests/morphology"),
    "mesh_manifests": ([], None, "tests/morphology"),
    "skeletons": ([], None, "tests/morphology"),
    "skeleton_merge": ([], None, "tests/morphology"),
    # they write into their input's group: blockwise == one block for every level in tests/export/test_pyramid.py
    "image_pyramid": ([], None, "tests/export/test_pyramid.py"),
    "label_pyramid": ([], None, "tests/export/test_pyramid.py"),
    "clefts": ([], "cleft_probability", "one grey level"),
    # these read a segmentation; their blockwise == one-block checks are in tests/synapses and tests/neurites
    "cleft_fragments": ([], None, "tests/synapses/test_synapse_stages.py"),
    "synapses": ([], None, "tests/synapses/test_synapse_stages.py"),
    "segment_features": ([], None, "tests/neurites/test_neurite_stages.py"),
    "neurite_types": ([], None, "tests/neurites/test_neurite_stages.py"),
    # the alignment chain needs sections with matchable content; tests/alignment/test_align_blocks_resume.py
    # compares its aligned volume and transforms computed in 27 blocks and in one
    "align_match": ([], None, "tests/alignment"),
    "align": (["align_match"], None, "tests/alignment"),
    "align_labels": ([], None, "tests/alignment/test_align_labels.py"),
    "unalign_labels": ([], None, "tests/alignment/test_align_labels.py"),
    # its CLAHE tiles (128 px by default) exceed these blocks: tests/alignment/test_section_normalize.py
    "section_normalize": ([], None, "tests/alignment/test_section_normalize.py"),
    # they need a section order (params.order): 16 blocks vs one in tests/alignment/test_section_order.py
    "reorder_sections": ([], None, "tests/alignment/test_section_order.py"),
    "restore_section_order": (["reorder_sections"], None, "tests/alignment/test_section_order.py"),
    # it needs a stack with smaller sections: 36 blocks give exactly the padding in tests/alignment/test_footprints.py
    "footprint_mask": ([], None, "tests/alignment/test_footprints.py"),
    # a mask volume is its input: tests/affinity/test_mask_affinities.py compares 18 blocks with one
    "mask_affinities": ([], None, "tests/affinity/test_mask_affinities.py"),
    # a coded mask is its input: tests/alignment/test_mask_values.py compares 18 blocks with the codes picked in numpy
    "mask_values": ([], None, "tests/alignment/test_mask_values.py"),
    # FFN agglomeration: 8 blocks vs one in tests/ffn/test_ffn_agglomeration.py
    "ffn_agglomerate": ([], None, "tests/ffn/test_ffn_agglomeration.py"),
    "ffn_merge": ([], None, "tests/ffn/test_ffn_agglomeration.py"),
    # its model is trained at 5 nm in-plane (this raw is 8 nm): tests/tissue/test_tissue_stage.py compares
    # 12 blocks with one, exactly
    "tissue": ([], None, "tests/tissue/test_tissue_stage.py"),
}


def test_every_registered_stage_has_a_case():
    discover()
    shipped = {name for name, cls in REGISTRY.items() if cls.__module__.startswith("connectome.")}
    assert shipped == set(CASES)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from connectome.synth import generate

    root = tmp_path_factory.mktemp("blockwise")
    generate(SHAPE, (8.0, 8.0, 8.0), seed=5).save(str(root), chunk_shape=(8, 32, 32))
    return str(root / "raw")


def _run(raw, out, stages, block, client):
    config = RunConfig(input=raw, output=str(out), blocks=BlocksConfig(shape=block, chunk_shape=SMALL),
                       cluster=ClusterConfig(), stages=[StageConfig(stage=s) for s in stages])
    return execute(plan_run(config), client, progress=False)


def _same_partition(a, b):
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c[1] is not None))
def test_blockwise_equals_one_block(name, raw, tmp_path, client):
    before, output, compare = CASES[name]
    upstream = tmp_path / "upstream"
    if before:
        _run(raw, upstream, before, SHAPE, client)
    chain = [name] if name != "relabel" else ["agglomerate", "relabel"]
    inputs = {"affinities": str(upstream / "affinities"), "fragments": str(upstream / "fragments")}
    results = {}
    for label, block in (("blocks", SMALL), ("one", SHAPE)):
        out = tmp_path / label
        config = RunConfig(
            input=raw, output=str(out), blocks=BlocksConfig(shape=block, chunk_shape=SMALL), cluster=ClusterConfig(),
            stages=[StageConfig(stage=s, inputs={k: v for k, v in inputs.items() if k in stage_class(s).input_names()})
                    for s in chain])
        plan = plan_run(config)
        assert len(plan.stages[-1].grid) == (18 if block == SMALL else 1)
        execute(plan, client, progress=False)
        vol = open_volume(str(out / output))
        results[label] = vol.read(vol.box)
    a, b = results["blocks"], results["one"]
    assert a.shape == b.shape and a.dtype == b.dtype
    if compare == "exact":
        np.testing.assert_array_equal(a, b)
    elif compare == "one grey level":
        diff = np.abs(a.astype(np.int16) - b)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    elif compare == "cut at faces":  # the agglomerate stage's face links join the pieces again
        z, y, x = np.meshgrid(*(np.arange(n) // s for n, s in zip(SHAPE, SMALL)), indexing="ij")
        block = (z * 3 + y) * 3 + x
        whole_cut = np.where(b > 0, b * 18 + block.astype(np.uint64), 0)
        pairs = np.unique(np.stack([a.ravel(), whole_cut.ravel()]), axis=1)
        assert pairs.shape[1] == np.unique(a).size  # no blockwise fragment spans two cut basins
        assert np.unique(a).size >= np.unique(whole_cut).size  # (a basin may leave a block and come back)
        assert np.unique(b).size > 2
    else:
        assert _same_partition(a, b)
        assert np.unique(a).size > 2  # a real segmentation, not one segment
