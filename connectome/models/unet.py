"""A small 3-d U-Net that predicts affinities, with 'same' padding and no input-dependent normalisation.

At inference every layer is a zero-padded convolution (BatchNorm, when trained with it, is folded into
the convolution before it), so an output voxel depends only on the input within the receptive-field
radius around it, and blockwise prediction with `context` voxels of margin (block offsets aligned to
`divisor`) is exactly seam-free. Group/instance normalisation would break this and is not offered.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from connectome.core.geometry import vec3

Vec3 = tuple[int, int, int]

NEAREST_OFFSETS: tuple[Vec3, ...] = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the U-Net; `levels` = len(downsample) + 1."""

    in_channels: int = 1
    base_channels: int = 8
    channel_growth: float = 3.0
    max_channels: int = 64
    downsample: tuple[Vec3, ...] = ((2, 2, 2), (2, 2, 2))  # factor between level l and l+1
    kernels: tuple[Vec3, ...] = ((3, 3, 3), (3, 3, 3), (3, 3, 3))  # conv kernel per level
    encoder_convs: tuple[int, ...] = (1, 2, 2)  # convs per level on the way down (last = bottom)
    decoder_convs: tuple[int, ...] = (1, 1)  # convs per level on the way up (levels 0..L-2)
    offsets: tuple[Vec3, ...] = NEAREST_OFFSETS  # one output channel per affinity offset
    extra_outputs: int = 0  # training-only outputs after the affinities (local shape descriptors)
    skip: str = "add"  # how the upsampled path joins the skip connection: "add" or "concat"
    norm: str = "none"  # "batch": BatchNorm while training, folded into the convolutions for inference

    def __post_init__(self) -> None:
        ints = lambda seq: tuple(tuple(int(v) for v in t) for t in seq)  # noqa: E731
        object.__setattr__(self, "downsample", ints(self.downsample))
        object.__setattr__(self, "kernels", ints(self.kernels))
        object.__setattr__(self, "offsets", ints(self.offsets))
        object.__setattr__(self, "encoder_convs", tuple(int(v) for v in self.encoder_convs))
        object.__setattr__(self, "decoder_convs", tuple(int(v) for v in self.decoder_convs))
        L = self.levels
        if len(self.kernels) != L or len(self.encoder_convs) != L or len(self.decoder_convs) != L - 1:
            raise ValueError(
                f"UNetConfig: {L} levels need {L} kernels, {L} encoder_convs and {L - 1} decoder_convs"
            )
        if any(k % 2 == 0 for ks in self.kernels for k in ks):
            raise ValueError(f"UNetConfig: kernel sizes must be odd, got {self.kernels}")
        if self.skip not in ("add", "concat"):
            raise ValueError(f"UNetConfig: skip must be 'add' or 'concat', got {self.skip!r}")
        if self.norm not in ("none", "batch"):
            raise ValueError(f"UNetConfig: norm must be 'none' or 'batch', got {self.norm!r}")
        if tuple(self.offsets[:3]) != NEAREST_OFFSETS:
            raise ValueError(f"UNetConfig: the first three offsets must be {NEAREST_OFFSETS}")

    @property
    def levels(self) -> int:
        return len(self.downsample) + 1

    @property
    def outputs(self) -> int:
        return len(self.offsets) + self.extra_outputs

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(
            min(self.max_channels, int(round(self.base_channels * self.channel_growth**l)))
            for l in range(self.levels)
        )

    @property
    def factors(self) -> tuple[Vec3, ...]:
        """Cumulative downsampling factor of each level relative to the input."""
        out = [(1, 1, 1)]
        for d in self.downsample:
            out.append(vec3([a * b for a, b in zip(out[-1], d)]))
        return tuple(out)

    @property
    def divisor(self) -> Vec3:
        return self.factors[-1]

    @property
    def radius(self) -> Vec3:
        """Receptive-field radius per axis: input voxels on each side that can reach an output voxel."""
        r = [0, 0, 0]
        f = self.factors
        for l in range(self.levels):
            n = self.encoder_convs[l] + (self.decoder_convs[l] if l < self.levels - 1 else 0)
            for a in range(3):
                r[a] += n * (self.kernels[l][a] // 2) * f[l][a]
                if l < self.levels - 1:  # strided conv down + nearest upsampling back: a window of d
                    r[a] += (self.downsample[l][a] - 1) * f[l][a]
        return tuple(r)  # type: ignore[return-value]

    @property
    def context(self) -> Vec3:
        """Margin (voxels, each side, a multiple of the divisor) that divisor-aligned tiles need."""
        return tuple(math.ceil(r / d) * d for r, d in zip(aligned_reach(self), self.divisor))  # type: ignore[return-value]

    @property
    def flops_per_voxel(self) -> float:
        """2 x multiply-adds of all convolutions per input voxel (upsampling, additions and ReLUs not counted)."""
        f = self.factors
        return sum(
            2.0 * cin * cout * math.prod(kernel) / math.prod(f[level])
            for level, cin, cout, kernel in _conv_list(self)
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        return cls(**d)


@functools.cache
def aligned_reach(config: UNetConfig) -> Vec3:
    """Per axis, the least margin that makes the output of a divisor-aligned tile exact.

    The reach of an input voxel depends on its phase p in the downsampling grid (divisor D). A tile
    whose edges sit on the grid needs, over all p, margin >= p + right(p) - D + 1 (inputs beyond the
    far side of its lower edge) and >= left(p) - p (beyond its upper edge); at most `radius`.
    Measured on the impulse response of an all-positive copy of the network (exact support), on one thread: the
    tensors are tiny, and two threads on a busy machine took up to 3 s instead of 0.04 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _aligned_reach(config)
    finally:
        torch.set_num_threads(threads)


def _aligned_reach(config: UNetConfig) -> Vec3:
    net = UNet(config).double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv3d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
    out = []
    for a in range(3):
        d, r = config.divisor[a], config.radius[a]
        n = 2 * math.ceil((r + d) / d) * d + 2 * d
        shape = list(config.divisor)
        shape[a] = n
        c0 = n // 2 // d * d
        x = torch.zeros(d, config.in_channels, *shape, dtype=torch.float64)
        for p in range(d):
            idx: list[int | slice] = [p, slice(None), 0, 0, 0]
            idx[2 + a] = c0 + p
            x[tuple(idx)] = 1.0
        with torch.no_grad():
            y = net(x)[:, 0] > 0
        need = 0
        for p in range(d):
            hit = torch.nonzero(y[p].any(dim=tuple(b for b in range(3) if b != a)))[:, 0]
            right = int(hit.max()) - (c0 + p)
            left = (c0 + p) - int(hit.min())
            need = max(need, p + right - d + 1, left - p)
        out.append(need)
    return tuple(out)  # type: ignore[return-value]


def _conv_list(cfg: UNetConfig) -> list[tuple[int, int, int, Vec3]]:
    """(level, in channels, out channels, kernel) of every convolution in the network."""
    ch = cfg.channels
    out = []
    cin = 2 if cfg.in_channels == 1 else cfg.in_channels  # see UNet.forward: 1 channel is doubled
    for l in range(cfg.levels):
        if l > 0:  # strided downsampling conv from level l-1
            out.append((l, ch[l - 1], ch[l], cfg.downsample[l - 1]))
            cin = ch[l]
        for _ in range(cfg.encoder_convs[l]):
            out.append((l, cin, ch[l], cfg.kernels[l]))
            cin = ch[l]
    for l in reversed(range(cfg.levels - 1)):
        out.append((l + 1, ch[l + 1], ch[l], (1, 1, 1)))  # reduce before upsampling
        cin = 2 * ch[l] if cfg.skip == "concat" else ch[l]
        for _ in range(cfg.decoder_convs[l]):
            out.append((l, cin, ch[l], cfg.kernels[l]))
            cin = ch[l]
    out.append((0, ch[0], cfg.outputs, (1, 1, 1)))
    return out


def _conv_block(cin: int, cout: int, kernel: Vec3, norm: str, stride: Vec3 | None = None) -> list[nn.Module]:
    pad = (0, 0, 0) if stride else vec3([k // 2 for k in kernel])
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, kernel, stride=stride or 1, padding=pad)]
    if norm == "batch":
        layers.append(nn.BatchNorm3d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


def _convs(cin: int, cout: int, kernel: Vec3, n: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += _conv_block(cin if i == 0 else cout, cout, kernel, norm)
    return nn.Sequential(*layers)


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution before it (inference: one affine conv)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv3d) and isinstance(bn, nn.BatchNorm3d):
                seq[i] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq[i + 1] = nn.Identity()
    return net


class UNet(nn.Module):
    """U-Net: strided-conv down, 1x1x1 conv + nearest upsampling up, additive (or concatenated) skips."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        self.downs = nn.ModuleList(
            nn.Sequential(*_conv_block(ch[l], ch[l + 1], d, config.norm, stride=d))
            for l, d in enumerate(config.downsample)
        )
        self.encoders = nn.ModuleList()
        cin = 2 if config.in_channels == 1 else config.in_channels
        for l in range(config.levels):
            self.encoders.append(_convs(cin, ch[l], config.kernels[l], config.encoder_convs[l], config.norm))
            cin = ch[l + 1] if l + 1 < config.levels else 0
        self.reducers = nn.ModuleList(nn.Conv3d(ch[l + 1], ch[l], 1) for l in range(config.levels - 1))
        k = 2 if config.skip == "concat" else 1
        self.decoders = nn.ModuleList(
            _convs(k * ch[l], ch[l], config.kernels[l], config.decoder_convs[l], config.norm)
            for l in range(config.levels - 1)
        )
        self.head = nn.Conv3d(ch[0], config.outputs, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            # oneDNN has no fast path for 1-channel 3-d convolutions (4x slower on CPU); a doubled
            # input channel takes the fast one
            x = x.expand(-1, 2, -1, -1, -1).contiguous(memory_format=_memory_format(self._first_conv().weight))
        skips = []
        for l, enc in enumerate(self.encoders):
            if l > 0:
                x = self.downs[l - 1](x)
            x = enc(x)
            skips.append(x)
        for l in reversed(range(len(self.decoders))):
            x = self.reducers[l](x)
            x = F.interpolate(x, scale_factor=self.config.downsample[l], mode="nearest")
            x = torch.cat([skips[l], x], dim=1) if self.config.skip == "concat" else x + skips[l]
            x = self.decoders[l](x)
        return self.head(x)

    def _first_conv(self) -> nn.Conv3d:
        first = self.encoders[0]
        conv = first[0] if isinstance(first, nn.Sequential) else None
        if not isinstance(conv, nn.Conv3d):
            raise TypeError(f"UNet: expected a Conv3d to open the first encoder, found {type(conv).__name__}")
        return conv

    def keep_outputs(self, n: int) -> None:
        """Drop all but the first `n` output channels (inference needs only the nearest neighbours)."""
        old = self.head
        new = nn.Conv3d(old.in_channels, n, 1, bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[:n])
            if new.bias is not None and old.bias is not None:
                new.bias.copy_(old.bias[:n])
        self.head = new


def _memory_format(weight: torch.Tensor) -> torch.memory_format:
    """channels_last_3d when the module was converted to it (the fast layout on CPU), else contiguous."""
    if weight.is_contiguous(memory_format=torch.channels_last_3d) and not weight.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


def preset(arch: str, offsets: tuple[Vec3, ...] = NEAREST_OFFSETS) -> UNetConfig:
    """The shipped architectures: 'iso' for isotropic FIB-SEM, 'aniso' for serial-section TEM."""
    if arch == "iso":
        return UNetConfig(
            base_channels=8, channel_growth=3.0, max_channels=64,
            downsample=((2, 2, 2), (2, 2, 2)), kernels=((3, 3, 3),) * 3,
            encoder_convs=(1, 2, 2), decoder_convs=(1, 1), offsets=offsets,
        )
    if arch == "aniso":
        return UNetConfig(
            base_channels=8, channel_growth=2.0, max_channels=64,
            downsample=((1, 2, 2), (1, 2, 2), (1, 2, 2)),
            kernels=((1, 3, 3), (1, 3, 3), (1, 3, 3), (3, 3, 3)),
            encoder_convs=(1, 2, 2, 2), decoder_convs=(1, 1, 1), offsets=offsets,
        )
    raise ValueError(f"unknown architecture {arch!r}; expected 'iso' or 'aniso'")


ARCHES = ("iso", "aniso")
