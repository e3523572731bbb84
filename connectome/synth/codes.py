"""Codes of the synthetic ground truth: cell classes, tissue mask values, compartments, organelles."""

from __future__ import annotations

# classes.json: one of these per label id
AXON, DENDRITE, SPINE, SOMA, GLIA = "axon", "dendrite", "spine", "soma", "glia"
CLASSES = (AXON, DENDRITE, SPINE, SOMA, GLIA)

# tissue volume (uint8)
TISSUE_NEUROPIL, TISSUE_VESSEL, TISSUE_SOMA, TISSUE_MYELIN, TISSUE_DEFECT = 0, 1, 2, 3, 4
TISSUE_NAMES = {0: "neuropil", 1: "vessel", 2: "soma/nucleus", 3: "myelin", 4: "defect"}

# compartments volume (uint8): which part of a cell a voxel belongs to
(C_NONE, C_AXON, C_BOUTON, C_DENDRITE, C_SPINE, C_SOMA, C_NUCLEUS, C_GLIA, C_MYELIN,
 C_VESSEL_WALL, C_VESSEL_LUMEN) = range(11)
COMPARTMENT_NAMES = {
    C_NONE: "extracellular", C_AXON: "axon", C_BOUTON: "bouton", C_DENDRITE: "dendrite shaft",
    C_SPINE: "spine", C_SOMA: "soma cytoplasm", C_NUCLEUS: "nucleus", C_GLIA: "glia",
    C_MYELIN: "myelin", C_VESSEL_WALL: "vessel wall", C_VESSEL_LUMEN: "vessel lumen",
}
POSTSYNAPTIC = (C_DENDRITE, C_SPINE, C_SOMA)

# organelles volume (uint8)
O_NONE, O_MITOCHONDRION, O_VESICLE, O_PSD = 0, 1, 2, 3
ORGANELLE_NAMES = {0: "none", 1: "mitochondrion", 2: "synaptic vesicle", 3: "postsynaptic density"}
