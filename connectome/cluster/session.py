"""What connectome knows of a cluster it started: the settings it was opened with and, for a cluster
of two pools, the scaler that runs them. The one place that answers "which settings, which scaler"
for a Client, so no module reads attributes attached to Dask objects."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connectome.cluster.client import ClusterConfig
    from connectome.cluster.pools import PoolScaler

_configs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Client -> ClusterConfig
_scalers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cluster -> PoolScaler


def remember_config(client, config: ClusterConfig) -> None:
    _configs[client] = config


def config_of(client) -> ClusterConfig | None:
    """The settings `open_client` opened this client with; None for a client opened elsewhere."""
    return _configs.get(client)


def attach_scaler(cluster, scaler: PoolScaler) -> None:
    _scalers[cluster] = scaler


def scaler_of(client_or_cluster) -> PoolScaler | None:
    """The PoolScaler of a client's (or a cluster's) SLURM/PBS or two-pool local cluster; None for others."""
    cluster = getattr(client_or_cluster, "cluster", None) or client_or_cluster
    try:
        return _scalers.get(cluster)
    except TypeError:  # not weakly referenceable: no cluster of ours
        return None
