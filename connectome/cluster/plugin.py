"""A Dask WorkerPlugin that loads named models once per worker, on the worker's device, and keeps them."""

from __future__ import annotations

import logging

from distributed import WorkerPlugin

from connectome.cluster import model_cache
from connectome.cluster.device import worker_device

logger = logging.getLogger(__name__)

PLUGIN_NAME = "connectome-models"


class ModelCachePlugin(WorkerPlugin):
    """Chooses the worker's device and loads `models` (names or .pt paths) into the model cache."""

    name = PLUGIN_NAME

    def __init__(self, models: tuple[str, ...] | list[str] = ()):
        self.models = tuple(models)

    def setup(self, worker) -> None:
        device = worker_device()
        model_cache.set_default_device(device)
        worker.connectome_device = device
        for name in self.models:
            model_cache.get_model(name, device)
        logger.info("connectome worker %s: device %s, models %s", worker.name, device, list(self.models))

    def teardown(self, worker) -> None:
        model_cache.clear()


def load_models_on_workers(client, models: list[str]) -> None:
    """Register (or replace) the plugin on every worker, present and future, loading `models` once each."""
    client.register_plugin(ModelCachePlugin(models), name=PLUGIN_NAME)


def worker_models(dask_worker=None) -> dict:
    """What a worker holds (for `client.run`): its device and the names of its loaded models."""
    return {"device": model_cache.default_device(), "models": model_cache.cached_names(),
            "loads": model_cache.load_count()}
