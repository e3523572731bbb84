"""Shapes of segmented objects: meshes (zmesh) and skeletons (kimimaro) made per block and joined per
object, written in Neuroglancer's precomputed formats (meshes sharded), and per-segment properties
(size, class, synapse counts)."""
