"""What goes into a synthetic volume (TissueOptions) and how it is imaged (ImagingOptions)."""

from __future__ import annotations

from dataclasses import dataclass, field

from connectome.synth.neurites import NeuriteShapes


@dataclass(frozen=True)
class TissueOptions:
    """Composition of the tissue. Sizes are nm; None means 'chosen from the volume's size'.

    Somata and vessels are real-sized (radius up to 5 um and 2.5 um) in large volumes and shrunk
    to a fraction of the smaller in-plane extent in small ones, so that every volume that is at
    least `min_extent_for_cells_nm` across shows each structure.
    """

    somata: int | None = None  # None: 1 per 2000 um^3 (at least 1) when the volume is wide enough
    vessels: int | None = None  # None: 1 when the volume is wide enough
    myelinated_axons: int | None = None  # None: 1 per 8 um^3 of volume, at most 4
    min_extent_for_cells_nm: float = 1000.0
    dendrite_fraction: float = 0.35  # of the volume left after vessels, somata and myelin
    coverage: float = 0.8  # axons are added until tubes cover this fraction of the free volume
    fill_nm: float = 60.0  # cells swell into the gaps between tubes up to this distance
    ecs_nm: float = 12.0  # width of extracellular space left between swollen cells and glia
    glia_core_nm: float = 90.0  # gaps deeper than this hold glial processes
    glia_cells_per_um3: float = 0.4
    synapses_per_um3: float = 1.2
    min_synapses: int = 2  # when the contacts allow it
    shapes: NeuriteShapes = field(default_factory=NeuriteShapes)


@dataclass(frozen=True)
class ImagingOptions:
    """EM-like contrast: dark membranes and organelles on textured cytoplasm, blur, noise."""

    membrane_width_nm: float = 9.0  # e-folding half-width of a membrane's dark band
    membrane_darkness: float = 0.6  # fraction of the local intensity removed at a membrane
    texture: float = 0.07  # amplitude of the cytoplasm's grain
    blur_nm: float = 5.0  # sigma of the imaging point-spread function
    noise: float = 0.05  # std of the detector noise, fraction of full scale
