"""The engine: runs stages over blocks; knows no science.

- `stage`: the stage contract (inputs, outputs, context, resources, tables; `process(block, volumes)`).
- `global_step`: work that runs once over all blocks' results, with its own fingerprint and marker.
- `registry`: stages by name (each domain registers its own in `<domain>/stages.py`).
- `config`: the run configuration (YAML); `plan`: validate a run and create its outputs, then execute it.
- `runner`: one stage on a Dask cluster (windows, batches, block dependencies, retries, resume).
- `markers`: done-markers and fingerprints.
"""
