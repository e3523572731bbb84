"""The read context of a stage that runs a U-Net: its reach on each side, the write box padded up to
the network's downsampling factor, mirrored past the volume's faces (so blocks are seam-free)."""

from __future__ import annotations

from connectome.core.geometry import Context, vec3


def unet_context(reach, divisor) -> Context:
    c = vec3(reach)
    return Context(c, c, multiple=vec3(divisor), clip=False)
