"""Training the cleft network on real data with a cleft mask and no partner directions: the masked
direction loss, the loss falling on a tiny VNC crop, the shipped `cleft-sstem` model (loads, is refused
on 8 nm isotropic data in one line) and `cleft-fib` (never mixes its separate slices)."""

import numpy as np
import pytest
import torch

from connectome.cli.main import main
from connectome.io import create_volume
from connectome.models.unet import UNetConfig
from connectome.synapses import model as M
from connectome.synapses.real_training import (
    DATASETS,
    cleft_head_only,
    load,
    real_patch,
    synapse_points,
    train_step,
    with_aux_outputs,
)
from connectome.synapses.training import cleft_loss

from conftest import data_file


def test_direction_loss_ignores_voxels_without_vectors():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 4, 6, 10, 10, generator=g, requires_grad=True)
    cleft = (torch.rand(2, 6, 10, 10, generator=g) > 0.7).float()
    vec = torch.randn(2, 3, 6, 10, 10, generator=g)
    known = torch.zeros(2, 6, 10, 10)
    known[:, 2:4, 3:7, 3:7] = 1
    loss_c, loss_v = cleft_loss(y, cleft, vec, known, (1, 2, 2))
    assert loss_v.item() > 0
    # directions (predicted and target, even NaN targets) where none is known change nothing
    unknown = (known == 0)[:, None]
    y2 = torch.cat([y.detach()[:, :1], torch.where(unknown, 5.0, y.detach()[:, 1:])], 1)
    vec2 = torch.where(unknown, float("nan"), vec)
    c2, v2 = cleft_loss(y2, cleft, vec2, known, (1, 2, 2))
    assert torch.isclose(v2, loss_v) and torch.isclose(c2, loss_c)
    # a known direction does count
    y3 = y.detach().clone()
    y3[0, 1, 2, 4, 4] += 3.0
    assert not torch.isclose(cleft_loss(y3, cleft, vec, known, (1, 2, 2))[1], loss_v)
    # nothing known: zero direction loss, no gradient into the direction outputs
    _, none = cleft_loss(y, cleft, vec, torch.zeros_like(known), 1)
    assert none.item() == 0.0
    (loss_c + none).backward()
    assert y.grad is not None and y.grad[:, 1:].abs().sum() == 0 and y.grad[:, 0].abs().sum() > 0


@pytest.fixture(scope="module")
def vnc():
    """The VNC's training sections 0-11."""
    ds = DATASETS["vnc"]
    root = data_file(ds.path).parents[1]
    return (ds, *load("vnc", "train", root))


def test_loss_falls_on_a_tiny_vnc_crop(vnc):
    torch.set_num_threads(1)
    ds, raw, mask, _ = vnc
    sl = np.s_[2:7, 330:458, 700:828]  # around synapse 10 of derived_synapses3d
    crop, cleft = raw[sl], mask[sl].astype(bool)
    assert cleft.mean() > 0.005
    torch.manual_seed(0)
    config = UNetConfig(base_channels=8, channel_growth=2.0, max_channels=32, downsample=((1, 2, 2),) * 2,
                        kernels=((1, 3, 3),) * 2 + ((3, 3, 3),), encoder_convs=(1, 1, 1), decoder_convs=(1, 1),
                        norm="none")
    net = M.cleft_net(config)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    mean, std = float(crop.mean() / 255), float(crop.std() / 255)
    losses = [train_step(net, opt, crop, cleft, (3, 64, 64), (1, 8, 8), 2, rng, mean, std) for _ in range(60)]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


def test_real_patch_keeps_sections_and_mask_together(vnc):
    _, raw, mask, _ = vnc
    rng = np.random.default_rng(1)
    r, c = real_patch(raw[:6], mask[:6], (4, 96, 96), rng, near_cleft=True)
    assert r.shape == c.shape == (4, 96, 96) and r.dtype == np.float32 and c.any()


def test_synapse_points_are_centroids():
    objects = np.zeros((2, 8, 8), np.uint32)
    objects[0, 1:3, 1:3] = 4
    objects[1, 6, 5:8] = 9
    assert np.allclose(synapse_points(objects), [[0, 1.5, 1.5], [1, 6, 6]])


def test_shipped_sstem_model_loads_and_refuses_8nm_isotropic(tmp_path, capsys):
    info = M.read_info("cleft-sstem")
    assert info.voxel_size == DATASETS["vnc"].voxel_size and not info.partners
    assert 0 < info.threshold < 1 and info.min_voxels >= 1
    model = M.load("cleft-sstem", "cpu")
    raw = np.random.default_rng(0).integers(0, 255, (2, 32, 32), np.uint8)
    prob, vec = M.predict(model, raw)
    assert prob.shape == raw.shape and vec.shape == (3, *raw.shape)
    shape, vs = (16, 64, 64), (8.0, 8.0, 8.0)
    for name, dtype in (("raw", np.uint8), ("seg", np.uint32)):
        v = create_volume(str(tmp_path / name), shape, dtype, (16, 64, 64), vs)
        v.write(v.box, np.ones(shape, dtype))
    rc = main(["synapses", str(tmp_path / "raw"), str(tmp_path / "out"), "--segmentation", str(tmp_path / "seg"),
               "--model", "cleft-sstem", "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "cleft-sstem" in err and "[8.0, 8.0, 8.0]" in err


def test_shipped_fib_model_sees_each_slice_alone():
    """`cleft-fib` (EPFL CA1 slices, which are not neighbours) never mixes sections: a slice's prediction
    is the same alone and in a stack."""
    info = M.read_info("cleft-fib")
    assert info.voxel_size == DATASETS["epfl"].voxel_size and not info.partners and info.context[0] == 0
    model = M.load("cleft-fib", "cpu")
    raw = np.random.default_rng(1).integers(0, 255, (3, 32, 48), np.uint8)
    stack, _ = M.predict(model, raw)
    alone, _ = M.predict(model, raw[1:2])
    assert np.allclose(stack[1], alone[0], atol=1e-5) and not np.allclose(stack[0], stack[1], atol=1e-3)


def test_training_continues_from_a_shipped_model_of_the_same_set():
    from connectome.core.errors import UserError
    from connectome.synapses.real_training import initial_net

    net, mean, std = initial_net("vnc", "cleft-sstem", 0.1, 0.2)
    shipped = M.load("cleft-sstem", "cpu")
    assert (mean, std) == (shipped.info.mean, shipped.info.std)
    for (k, a), (_, b) in zip(net.state_dict().items(), shipped.net.state_dict().items()):
        assert torch.equal(a, b), k
    fresh, mean, std = initial_net("vnc", None, 0.1, 0.2)
    assert (mean, std) == (0.1, 0.2)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    with pytest.raises(UserError, match="cleft-fib: its architecture or voxel size"):
        initial_net("vnc", "cleft-fib", 0.1, 0.2)


def test_auxiliary_masks_move_with_the_patch(vnc):
    """Flips and transposes move the auxiliary masks with the image: a mask equal to the cleft mask
    stays equal to it in every patch."""
    _, raw, mask, _ = vnc
    aux = np.stack([mask[:6], ~mask[:6]])
    rng = np.random.default_rng(3)
    for _ in range(12):
        r, c, a = real_patch(raw[:6], mask[:6], (4, 96, 96), rng, True, aux)
        assert a.shape == (2, 4, 96, 96) and np.array_equal(a[0], c) and np.array_equal(a[1], ~c)


def _tiny_config():
    return UNetConfig(base_channels=8, channel_growth=2.0, max_channels=16, downsample=((1, 2, 2),),
                      kernels=((1, 3, 3), (1, 3, 3)), encoder_convs=(1, 1), decoder_convs=(1,), norm="none")


def test_the_saved_network_keeps_the_cleft_outputs_of_an_auxiliary_one():
    torch.manual_seed(0)
    net = with_aux_outputs(M.cleft_net(_tiny_config()), 3)
    assert net.head.out_channels == M.OUTPUTS + 3
    x = torch.randn(1, 1, 2, 16, 16)
    kept = cleft_head_only(net)
    assert kept.head.out_channels == M.OUTPUTS and net.head.out_channels == M.OUTPUTS + 3
    with torch.no_grad():
        assert torch.allclose(net(x)[:, :M.OUTPUTS], kept(x), atol=1e-6)


def test_auxiliary_masks_train_their_outputs_and_leave_the_cleft_loss_alone(vnc):
    """With the auxiliary loss weighted 0 the cleft outputs learn exactly what they learn without it; with
    a weight the extra outputs (and the shared layers) learn too."""
    torch.set_num_threads(1)
    _, raw, mask, _ = vnc
    sl = np.s_[2:7, 330:458, 700:828]
    crop, cleft = raw[sl], mask[sl].astype(bool)
    aux = np.stack([crop < 100])
    runs = {}
    for name, a, w in (("none", None, 0.0), ("zero", aux, 0.0), ("weighted", aux, 0.5)):
        torch.manual_seed(0)
        net = M.cleft_net(_tiny_config())
        if a is not None:
            net = with_aux_outputs(net, 1)
        start = net.head.weight.detach().clone()
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        rng = np.random.default_rng(0)
        for _ in range(2):
            train_step(net, opt, crop, cleft, (3, 32, 32), (1, 4, 4), 2, rng, 0.5, 0.2, a, w)
        runs[name] = (cleft_head_only(net), net.head.weight.detach() - start)
    x = torch.from_numpy(crop[:3, :32, :32].astype(np.float32) / 255.0)[None, None]
    with torch.no_grad():
        none, zero, weighted = (runs[k][0](x) for k in ("none", "zero", "weighted"))
    assert torch.allclose(none, zero, atol=1e-6)
    assert not torch.allclose(none, weighted, atol=1e-4)
    assert runs["zero"][1][M.OUTPUTS:].abs().sum() == 0 and runs["weighted"][1][M.OUTPUTS:].abs().sum() > 0
