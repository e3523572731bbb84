"""Tissue classes per voxel (neuropil, soma/nucleus, vessel, myelin, defect, mitochondrion,
glia/extracellular) and the mask of voxels that segmentation should leave out."""
