"""Function-preserving widening: load a narrower U-Net's weights into a wider one of the same shape.

Every tensor of the narrow network goes into the leading slice of the wide one's. The wide network's
extra channels keep their fresh initialisation, but every weight that reads an extra channel is set to
zero, so at the start the wide network computes exactly what the narrow one did (its extra channels are
computed and ignored) and training grows them from there (Net2Net's idea, with zero outgoing weights
instead of copied units).
"""

from __future__ import annotations

import torch


def can_widen(narrow: dict[str, torch.Tensor], wide: dict[str, torch.Tensor]) -> str | None:
    """None when `narrow` fits `wide` (same keys, every axis no larger); else the first key that does not."""
    if narrow.keys() != wide.keys():
        missing = sorted(set(narrow) ^ set(wide))
        return missing[0]
    for key, t in narrow.items():
        w = wide[key]
        if t.dim() != w.dim() or any(a > b for a, b in zip(t.shape, w.shape)):
            return key
        if t.dim() == 5 and t.shape[2:] != w.shape[2:]:  # kernel sizes must agree
            return key
    return None


def widen_state(narrow: dict[str, torch.Tensor], wide: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`wide` (a fresh network's state) with `narrow` in its leading slices and zero weights on the extra
    input channels of every convolution."""
    key = can_widen(narrow, wide)
    if key is not None:
        raise ValueError(f"widen_state: {key} does not fit the wider network (another architecture?)")
    out = {}
    for key, fresh in wide.items():
        old = narrow[key]
        if old.shape == fresh.shape:
            out[key] = old.clone()
            continue
        new = fresh.clone()
        if new.dim() == 5:  # a convolution (out, in, kz, ky, kx): extra inputs are read with weight 0
            new[:, old.shape[1]:] = 0
        new[tuple(slice(0, n) for n in old.shape)] = old
        out[key] = new
    return out
