"""Shapes of segmented objects: meshes (zmesh) and skeletons (kimimaro) made per block and joined per
object, written in Neuroglancer's precomputed formats, and per-segment properties (size)."""
