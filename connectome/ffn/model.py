"""The flood-filling network: residual 3-d convolution modules mapping (image, object logits) in a
field of view (FOV) to an update of the object logits (the POM, in logit space)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from connectome.core.geometry import vec3

Vec3 = tuple[int, int, int]

LOGIT_INIT = -2.944  # logit(0.05): the POM of voxels not reached yet
LOGIT_SEED = 2.944  # logit(0.95): the seed voxel


@dataclass(frozen=True)
class FFNConfig:
    """Architecture and geometry: FOV and movement step (z, y, x), module count, features, kernel."""

    fov: Vec3 = (33, 33, 33)
    deltas: Vec3 = (8, 8, 8)
    depth: int = 12
    features: int = 32
    kernel: Vec3 = (3, 3, 3)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fov", tuple(int(v) for v in self.fov))
        object.__setattr__(self, "deltas", tuple(int(v) for v in self.deltas))
        object.__setattr__(self, "kernel", tuple(int(v) for v in self.kernel))
        if any(f % 2 == 0 for f in self.fov) or any(k % 2 == 0 for k in self.kernel):
            raise ValueError(f"FOV {self.fov} and kernel {self.kernel} must be odd")
        if any(2 * d >= f for d, f in zip(self.deltas, self.fov)):
            raise ValueError(f"movement step {self.deltas} must be less than half the FOV {self.fov}")

    @classmethod
    def from_dict(cls, d: dict) -> FFNConfig:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**fields)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def radius(self) -> Vec3:
        return tuple(f // 2 for f in self.fov)  # type: ignore[return-value]

    @property
    def flops_per_fov(self) -> float:
        k = self.kernel[0] * self.kernel[1] * self.kernel[2]
        convs = 2 * k * self.features * (2 + self.features * (2 * self.depth - 1) + 1)
        return float(convs * self.fov[0] * self.fov[1] * self.fov[2])


REFERENCE = FFNConfig()  # the published isotropic network
REFERENCE_ANISO = FFNConfig(fov=(17, 33, 33), deltas=(4, 8, 8), kernel=(3, 3, 3))
CPU = FFNConfig(fov=(17, 17, 17), deltas=(5, 5, 5), depth=3, features=16)
CPU_ANISO = FFNConfig(fov=(9, 25, 25), deltas=(2, 6, 6), depth=3, features=16)


CPU_CHANNELS_LAST = True  # FFN.forward_stacked's CPU input layout; benchmarks/ffn_speed.py times both
CPU_ONEDNN_SINGLE = True  # a CPU batch of one straight to oneDNN (`conv`); benchmarks/ffn_speed.py times both


def _onednn_takes(layer: nn.Conv3d, dtype: torch.dtype) -> bool:
    """Whether oneDNN can run `layer` directly: enabled, zero padding given as numbers, and float32, or bfloat16 on
    a CPU whose oneDNN computes it (elsewhere PyTorch's own kernel takes bfloat16)."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled) or torch.is_autocast_enabled("cpu"):
        return False
    if layer.padding_mode != "zeros" or not isinstance(layer.padding, tuple):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def conv(layer: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """layer(x) in x's dtype (float32, or bfloat16 where `forward_stacked` is asked for it). PyTorch sends a CPU
    batch of one with small 3x3x3 kernels to its native kernel, about 7x slower than oneDNN, which takes it here
    directly (benchmarks/results/ffn_speed.md)."""
    weight, bias = layer.weight, layer.bias
    if weight.dtype != x.dtype:
        weight, bias = weight.to(x.dtype), None if bias is None else bias.to(x.dtype)
    if CPU_ONEDNN_SINGLE and x.shape[0] == 1 and x.device.type == "cpu" and _onednn_takes(layer, x.dtype):
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, layer.padding, layer.stride, layer.dilation,
                                                 layer.groups)
    return F.conv3d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


class Module(nn.Module):
    """One residual module: relu-conv-relu-conv added to its input."""

    def __init__(self, features: int, kernel: Vec3):
        super().__init__()
        pad = vec3([k // 2 for k in kernel])
        self.conv1 = nn.Conv3d(features, features, kernel, padding=pad)
        self.conv2 = nn.Conv3d(features, features, kernel, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + conv(self.conv2, torch.relu(conv(self.conv1, torch.relu(x))))


class FFN(nn.Module):
    """(B, 2, *fov) image + POM logits -> (B, 1, *fov) new POM logits (input logits + learned update)."""

    def __init__(self, config: FFNConfig):
        super().__init__()
        self.config = config
        pad = vec3([k // 2 for k in config.kernel])
        self.stem1 = nn.Conv3d(2, config.features, config.kernel, padding=pad)
        self.stem2 = nn.Conv3d(config.features, config.features, config.kernel, padding=pad)
        self.modules_ = nn.Sequential(*[Module(config.features, config.kernel) for _ in range(config.depth - 1)])
        self.head = nn.Conv3d(config.features, 1, 1)

    def forward(self, image: torch.Tensor, pom: torch.Tensor) -> torch.Tensor:
        return self.forward_stacked(torch.cat([image, pom], dim=1))

    def forward_stacked(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """(B, 2, *fov) image and POM logits stacked as channels -> (B, 1, *fov) new POM logits in x's dtype; the
        network computes in `dtype` when given (bfloat16), the POM is added in x's. On CPU the input is laid out
        channels-last, which oneDNN runs faster (benchmarks/results/ffn_speed.md)."""
        if CPU_CHANNELS_LAST and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        pom = x[:, 1:2]
        if dtype is not None:
            x = x.to(dtype)
        x = conv(self.stem2, torch.relu(conv(self.stem1, x)))
        x = self.modules_(x)
        return pom + conv(self.head, torch.relu(x)).to(pom.dtype)


@dataclass
class FFNInfo:
    """What inference needs besides the weights: geometry, voxel size, normalisation, thresholds, provenance."""

    name: str
    config: FFNConfig
    voxel_size: tuple[float, float, float]
    mean: float = 0.5
    std: float = 0.25
    move_threshold: float = 0.9
    segment_threshold: float = 0.6
    min_size: int = 100
    agree: float = 0.8  # FFN agglomeration's agreement threshold (ffn.agglomeration), chosen per model where it was
    provenance: dict = field(default_factory=dict)
    path: str = ""
    input: str = "raw"  # what the network reads as its image: `raw`, or `affinities:MODEL` (ffn.inputs)

    def normalise(self, raw):
        """uint8 image (raw, or the mean affinity of an `affinities:MODEL` network) -> the float32 network input."""
        return ((raw.astype("float32") / 255.0) - self.mean) / self.std
