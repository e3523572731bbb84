"""The one table of tissue classes: codes (as stored in a `tissue` volume), names, the default mask.

Codes 0-4 are those of the synthetic generator's `tissue` volume (connectome.synth.codes.TISSUE_*);
5 and 6 are the classes that real ground truth labels (VNC `labels_9class`, EPFL CA1 markup).
"""

from __future__ import annotations

from connectome.core.errors import UserError

NEUROPIL, VESSEL, SOMA, MYELIN, DEFECT, MITOCHONDRION, GLIA = range(7)
NAMES = ("neuropil", "vessel", "soma/nucleus", "myelin", "defect", "mitochondrion", "glia/extracellular")
N_CLASSES = len(NAMES)
ALL = (1 << N_CLASSES) - 1  # the bit set of every class: a pixel labelled so carries no information

# Excluded from segmentation by default, because none of them is neuropil that a neuron id can be
# traced through: a vessel (lumen and wall) and a soma/nucleus are large, nearly membrane-free
# regions where an affinity watershed or an FFN floods and merges whatever touches them; myelin is
# a dark, layered sheath that reads as one thick membrane and splits or swallows its axon; a defect
# (blank or missing section) carries no image, so anything "traced" across it is a guess.
# Mitochondria and glia stay: they are inside or between the cells that are segmented.
DEFAULT_EXCLUDE = ("vessel", "soma/nucleus", "myelin", "defect")


def code_of(name: str) -> int:
    """Class code of a name (as in NAMES), one line naming the choices otherwise."""
    if name not in NAMES:
        raise UserError(f"tissue class {name!r} unknown; expected one of {', '.join(NAMES)}")
    return NAMES.index(name)


def bits(*codes: int) -> int:
    """The bit set (uint8) of the classes `codes`: a partial label allows any of them."""
    out = 0
    for c in codes:
        out |= 1 << c
    return out
