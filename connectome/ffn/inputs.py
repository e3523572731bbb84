"""What an FFN reads in place of the EM image: the raw image itself (`raw`), or the mean of an affinity
model's three nearest-neighbour affinities (`affinities:NAME`), a boundary map in uint8 that the
`affinities` stage of the same model writes (the issue's "extra input channels ... the affinity U-Net's
predictions", here as the only image channel)."""

from __future__ import annotations

import numpy as np

from connectome.core.errors import UserError

RAW = "raw"
AFFINITIES = "affinities:"


def affinity_model(spec: str) -> str | None:
    """The affinity model an input spec names (`affinities:NAME`), None for `raw`; one line otherwise."""
    if spec == RAW:
        return None
    if spec.startswith(AFFINITIES) and len(spec) > len(AFFINITIES):
        return spec[len(AFFINITIES):]
    raise UserError(f"FFN input {spec!r}: expected 'raw' or 'affinities:MODEL' (an affinity model name)")


def mean_affinity(stored: np.ndarray) -> np.ndarray:
    """(3, z, y, x) stored uint8 affinities -> (z, y, x) uint8, their mean rounded to the nearest integer."""
    if stored.ndim != 4 or stored.shape[0] != 3:
        raise ValueError(f"mean_affinity: expected (3, z, y, x) affinities, got shape {stored.shape}")
    total = stored.astype(np.uint16).sum(axis=0)
    return ((total + 1) // 3).astype(np.uint8)  # rint(total / 3): total % 3 == 2 rounds up


def affinity_image(raw: np.ndarray, model_name: str, tile=(64, 128, 128)) -> np.ndarray:
    """The image an `affinities:NAME` FFN reads, for a whole uint8 volume (training and validation): the
    model's affinities at its validated test-time augmentation, stored as uint8, then `mean_affinity`."""
    from connectome.affinity.encoding import affinities_as_uint8
    from connectome.models import load_model
    from connectome.models.inference import predict_volume

    model = load_model(model_name, "cpu")
    affs = predict_volume(model, raw, tile=tile, flips=model.info.tta)
    return mean_affinity(affinities_as_uint8(affs))
