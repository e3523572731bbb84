"""Where blocks run: local / SLURM / PBS / tcp:// clusters (`client`, `jobqueue`), two worker pools
(`pools`), the settings a run was opened with (`session`), and what runs inside a worker: its
environment (`worker_env`), device choice (`device`), the resident model cache (`model_cache`,
`plugin`) and the `dask worker --preload connectome.cluster.preload` entry point (`preload`)."""
