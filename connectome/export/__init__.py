"""Seeing the result: image and label pyramids (OME-Zarr multiscales, precomputed scales), the
Neuroglancer state for an output directory, and the local server `connectome view` runs."""
