"""The foundation every other folder builds on; imports nothing of connectome above it.

- `geometry`: Box, Context, Block, BlockGrid (integer voxel boxes, z y x).
- `address`: the one parser of volume addresses (`path.zarr/ds`, `precomputed://...`, `f.npz#key`,
  TIFF stacks, each with an optional `[z0:z1]` section range).
- `errors`: UserError (one line, exit code 2) and StageFailed (block, stage, first traceback).
- `machine`: what machine this is (CPU name), for provenance and benchmarks.
"""
