"""A hand-set flood-filling network for tests: it spreads the object through bright voxels only."""

from __future__ import annotations

import torch

from connectome.ffn.model import FFN, FFNConfig, FFNInfo

BIG = 1e9


def handset_model(fov=(9, 9, 9), deltas=(2, 2, 2)) -> tuple[FFN, FFNInfo]:
    """Channels: 0 = min(relu(pom), 1) spread by each 3x3x3 conv, 1 = relu(pom - 1), 2 = boundary (dark voxels)."""
    config = FFNConfig(fov=fov, deltas=deltas, depth=3, features=3)
    net = FFN(config)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        c = (1, 1, 1)
        net.stem1.weight[0, 1][c] = 1.0  # relu(pom)
        net.stem1.weight[1, 1][c] = 1.0  # relu(pom - 1)
        net.stem1.bias[1] = -1.0
        net.stem1.weight[2, 0][c] = -1.0  # relu(-image): 1 on dark voxels
        spread = [net.stem2, *[m.conv1 for m in net.modules_], *[m.conv2 for m in net.modules_]]
        for conv in spread:
            conv.weight[0, 0] = 1.0
            conv.weight[2, 2][c] = 1.0
            conv.weight[0, 2][c] = -BIG
        net.stem2.weight[0, 1] = -1.0  # min(relu(pom), 1) = relu(pom) - relu(pom - 1)
        net.head.weight[0, 0] = 10.0
        net.head.weight[0, 2] = -1e3
    info = FFNInfo("handset", config, (8.0, 8.0, 8.0), mean=0.5, std=0.5, min_size=5)
    return net.eval(), info


def saved_handset_model(directory, deltas=(4, 4, 4), input="raw", voxel_size=(8.0, 8.0, 8.0),
                        name="ffn-handset") -> str:
    """The hand-set network saved as `ffn-handset` in `directory`: a path `--model` takes. Its FOV moves 4 voxels
    at a time by default (the largest step a 9-voxel FOV allows), which needs 4x fewer FOVs than 2. With
    `input="affinities:MODEL"` it floods through voxels of mean affinity above one half instead."""
    from connectome.ffn.registry import save_model

    net, info = handset_model(deltas=deltas)
    info.name, info.input, info.voxel_size = name, input, tuple(voxel_size)
    return str(save_model(directory / name, net, info))


def compartments_volume(directory) -> str:
    """A bright 16 x 64 x 64 uint8 volume cut by three dark walls (y 20, x 41, z 7) into 2 x 2 x 2 compartments,
    stored as `directory/in/raw` in 8 x 32 x 32 chunks at 8 nm: its address."""
    import numpy as np

    from connectome.io import create_volume

    raw = np.full((16, 64, 64), 255, np.uint8)
    raw[:, 20, :] = 1  # dark, not blank: a blank (exactly 0) whole section would be left out (`affinity.blank`)
    raw[:, :, 41] = 1
    raw[7, :, :] = 1
    vol = create_volume(str(directory / "in" / "raw"), raw.shape, np.uint8, (8, 32, 32), (8, 8, 8))
    vol.write(vol.box, raw)
    return vol.address
