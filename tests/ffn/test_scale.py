"""Running an FFN at a coarser voxel size: downsampled image, mask and labels, upsampled objects (`ffn.scale`)."""

import json

import numpy as np

from connectome.cli.main import main
from connectome.ffn.scale import downsample_image, downsample_labels, downsample_mask, scale_for, upsample_labels


def test_scale_from_voxel_sizes():
    assert scale_for((40, 8, 8), (40, 4, 4)) == (1, 2, 2)
    assert scale_for((10, 10, 10), (10, 10, 10)) == (1, 1, 1)
    assert scale_for((10, 10, 10), (20, 20, 20)) == (1, 1, 1)  # never upsampled
    assert scale_for((20, 20, 20), (9, 10, 11)) == (2, 2, 2)
    assert scale_for((6, 10, 14), (4, 4, 4)) == (2, 3, 4)  # halves round up (not to even)


def test_image_is_the_rounded_box_mean_and_a_partial_box_repeats_its_edge():
    image = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    coarse = downsample_image(image, (1, 2, 2))
    assert coarse.shape == (2, 2, 3) and coarse.dtype == np.uint8
    assert coarse[0, 0, 0] == round((0 + 1 + 5 + 6) / 4)
    assert coarse[1, 1, 2] == image[1, 2, 4]  # a box of one voxel, padded by itself
    assert coarse[0, 1, 0] == round((10 + 11) / 2)  # the last row padded by repeating it


def test_labels_mask_and_round_trip():
    labels = np.zeros((2, 4, 4), np.uint64)
    labels[:, :, 2:] = 7
    labels[:, 1, 1] = 3  # the centre of box (0, 0) in y/x is voxel (1, 1)
    coarse = downsample_labels(labels, (1, 2, 2))
    assert coarse.tolist() == [[[3, 7], [0, 7]]] * 2
    fine = upsample_labels(coarse, (1, 2, 2), (2, 3, 3))
    assert fine.shape == (2, 3, 3) and fine.flags.c_contiguous
    assert fine[0].tolist() == [[3, 3, 7], [3, 3, 7], [0, 0, 7]]
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 3, 0] = True
    assert downsample_mask(mask, (1, 2, 2)).tolist() == [[[False, False], [True, False]]]
    assert downsample_mask(None, (1, 2, 2)) is None


def _segment(capsys, raw, out, model, block, *extra, code=0):
    argv = ["segment", raw, str(out), "--method", "ffn", "--model", model, "--block-shape", *map(str, block),
            "--workers", "2", "--no-progress", "--json", *extra]
    assert main(argv) == code
    captured = capsys.readouterr()
    return captured if code else json.loads(captured.out.strip().splitlines()[-1])


def test_a_model_of_twice_the_voxel_size_runs_on_the_downsampled_image(tmp_path, capsys, client):
    """The hand-set network (8 nm) on 8 x 4 x 4 nm data runs at 1 2 2: 2-voxel walls still split compartments, a
    1-voxel wall averages away; 8 blocks equal one block; the same run at 1 1 1 or with FFN agglomeration is
    refused in one line."""
    from connectome.io import create_volume, open_volume
    from connectome.metrics.voi import voi

    from ffn_handset import saved_handset_model

    model = saved_handset_model(tmp_path)
    raw = np.full((16, 63, 62), 255, np.uint8)  # not a multiple of the factors: the last coarse row is one voxel
    raw[:, 20:22, :] = 1
    raw[:, :, 40:42] = 1
    raw[7, :, :] = 1
    raw[:, 50, :] = 1  # one fine voxel thick: half a coarse voxel, mean 128, not a boundary for the network
    vol = create_volume(str(tmp_path / "in" / "raw"), raw.shape, np.uint8, (8, 32, 32), (8, 4, 4))
    vol.write(vol.box, raw)

    def read(summary):
        out = open_volume(summary["segmentation"])
        return out.read(out.box)

    # an odd overlap is rounded up to whole coarse voxels (9 10 10), so every block sees one block's coarse grid
    seg8 = read(_segment(capsys, vol.address, tmp_path / "eight", model, (8, 32, 32), "--overlap", "9", "9", "9"))
    seg1 = read(_segment(capsys, vol.address, tmp_path / "one", model, (16, 64, 64)))
    assert len(np.unique(seg1)) == 8  # 2 x 2 x 2 compartments; the wall at y 50 split nothing
    assert voi(seg8, seg1) == (0.0, 0.0)
    assert np.all(seg1 != 0)
    # at the data's own voxel size the network would split at y 50 too; the model's voxel size refuses it
    refused = _segment(capsys, vol.address, tmp_path / "fine", model, (16, 64, 64), "--ffn-scale", "1", "1", "1",
                       code=2)
    err = refused.err.strip().splitlines()
    assert len(err) == 1 and "trained on [8.0, 8.0, 8.0] nm voxels" in err[0] and "[8.0, 4.0, 4.0]" in err[0], err
    fine = read(_segment(capsys, vol.address, tmp_path / "fine", model, (16, 64, 64), "--ffn-scale", "1", "1", "1",
                         "--allow-voxel-mismatch"))
    assert len(np.unique(fine)) == 12
    refused = _segment(capsys, vol.address, tmp_path / "agg", model, (16, 64, 64), "--ffn-agglomerate", code=2)
    err = refused.err.strip().splitlines()
    assert len(err) == 1 and "leave out --ffn-agglomerate" in err[0], err
    assert not (tmp_path / "agg").exists()
    refused = _segment(capsys, vol.address, tmp_path / "odd", model, (8, 31, 32), code=2)  # a coarse voxel split
    err = refused.err.strip().splitlines()
    assert len(err) == 1 and "needs a multiple of [1, 2, 2]" in err[0], err


def test_a_coarse_consensus_model_splits_what_the_fine_model_merges(tmp_path, capsys, client):
    """`--consensus-model`: the hand-set network at the data's voxel size (8 x 4 x 4 nm) floods through a dim
    passage in a wall that, averaged at 8 x 8 x 8 nm, is dark; the coarse one floods across a one-voxel wall. The
    consensus keeps both splits: it equals the compartments of the walls without the passage."""
    import cc3d

    from connectome.io import create_volume, open_volume
    from connectome.metrics.voi import voi

    from ffn_handset import saved_handset_model

    fine_model = saved_handset_model(tmp_path, voxel_size=(8.0, 4.0, 4.0), name="ffn-fine")
    coarse_model = saved_handset_model(tmp_path, voxel_size=(8.0, 8.0, 8.0), name="ffn-coarse")
    raw = np.full((16, 64, 64), 255, np.uint8)
    raw[7] = 1  # a dark wall, not blank: a blank (exactly 0) section would be filled from its neighbours
    raw[:, 20:22, :] = 0
    raw[:, 50, :] = 0  # one voxel thick: the coarse model floods across it
    raw[:, :20, 10:12] = 0
    compartments = cc3d.connected_components(raw == 255, connectivity=6)
    raw[:, 5, 10:12] = 140  # a dim passage through the wall: bright for the fine model, dark averaged (70)
    vol = create_volume(str(tmp_path / "in" / "raw"), raw.shape, np.uint8, (8, 32, 32), (8, 4, 4))
    vol.write(vol.box, raw)
    inside = compartments != 0

    def segments(out, model, *extra):
        summary = _segment(capsys, vol.address, tmp_path / out, model, (8, 32, 32), *extra)
        seg = open_volume(summary["segmentation"])
        return seg.read(seg.box)

    n = len(np.unique(compartments[inside]))
    fine, coarse = segments("fine", fine_model), segments("coarse", coarse_model)
    both = segments("both", fine_model, "--consensus-model", coarse_model)
    one_block = _segment(capsys, vol.address, tmp_path / "one", fine_model, (16, 64, 64), "--consensus-model",
                         coarse_model)
    assert len(np.unique(fine[inside])) == n - 2  # merged through the passage (one per z half)
    assert len(np.unique(coarse[inside])) == n - 2  # merged across y 50 (one per z half)
    assert voi(both[inside], compartments[inside]) == (0.0, 0.0)
    seg1 = open_volume(one_block["segmentation"])
    assert voi(seg1.read(seg1.box), both) == (0.0, 0.0)
    refused = _segment(capsys, vol.address, tmp_path / "bad", fine_model, (8, 32, 32), "--consensus-model", "nope",
                       code=2)
    err = refused.err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0], err
    reads_affinities = saved_handset_model(tmp_path, input="affinities:synthetic", name="ffn-aff")
    refused = _segment(capsys, vol.address, tmp_path / "bad", fine_model, (8, 32, 32), "--consensus-model",
                       reads_affinities, code=2)
    err = refused.err.strip().splitlines()
    assert len(err) == 1 and "both must read the same image" in err[0], err
    assert not (tmp_path / "bad").exists()
