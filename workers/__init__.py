"""What runs inside a Dask worker: the model cache, device choice and worker preload."""
