"""Synthetic EM volumes with complete ground truth, deterministic by seed (for tests, demos, training)."""

from connectome.synth.defects import Defects
from connectome.synth.generate import generate
from connectome.synth.options import ImagingOptions, TissueOptions
from connectome.synth.volume import GroundTruth, SynthVolume, load_ground_truth

__all__ = ["generate", "SynthVolume", "GroundTruth", "load_ground_truth", "Defects", "TissueOptions",
           "ImagingOptions"]
