"""`dask worker --preload connectome.cluster.preload`: pin this worker's GPU and register the model cache plugin.

Models to load at start can be named in CONNECTOME_WORKER_MODELS (comma-separated names or .pt
paths); others load on first use and then stay.
"""

from __future__ import annotations

import os

from connectome.cluster.device import pin_gpu
from connectome.cluster.plugin import PLUGIN_NAME, ModelCachePlugin


async def dask_setup(worker) -> None:
    gpus = int(worker.state.total_resources.get("GPU", 0)) if hasattr(worker, "state") else 0
    pin_gpu(worker.name, max(gpus, 1))
    models = [m for m in os.environ.get("CONNECTOME_WORKER_MODELS", "").split(",") if m.strip()]
    await worker.plugin_add(plugin=ModelCachePlugin(models), name=PLUGIN_NAME)
