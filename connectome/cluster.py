"""Where stages run: a LocalCluster by default, or an existing scheduler (`tcp://HOST:PORT`)."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from connectome.errors import UserError


class ClusterConfig(BaseModel):
    """Cluster settings from the YAML config or the command line."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field("local", description="local, slurm, pbs, or a scheduler address tcp://HOST:PORT")
    n_workers: int = Field(2, ge=1, description="local worker processes")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "auto"
    dashboard_address: str = ":8787"
    processes: bool = True


def parse_cluster_option(value: str | None, base: ClusterConfig | None = None) -> ClusterConfig:
    """Apply `--cluster local|slurm|pbs|tcp://...` on top of the config's cluster section."""
    base = base or ClusterConfig()
    if value is None:
        return base
    if value in ("local", "slurm", "pbs") or value.startswith(("tcp://", "tls://")):
        return base.model_copy(update={"kind": value})
    raise UserError(f"--cluster: expected local, slurm, pbs or tcp://HOST:PORT, found {value!r}")


@contextlib.contextmanager
def open_client(config: ClusterConfig | None = None, quiet: bool = False) -> Iterator["Client"]:
    """A connected distributed Client for `config`; the cluster it started is closed on exit."""
    from distributed import Client, LocalCluster

    config = config or ClusterConfig()
    kind = config.kind
    if kind.startswith(("tcp://", "tls://")):
        try:
            client = Client(kind, timeout="10s")
        except OSError as e:
            raise UserError(f"--cluster {kind}: no Dask scheduler answers there ({e})") from None
        _announce(client, quiet)
        try:
            yield client
        finally:
            client.close()
        return
    if kind == "local":
        cluster = LocalCluster(
            n_workers=config.n_workers,
            threads_per_worker=config.threads_per_worker,
            processes=config.processes,
            memory_limit=config.memory_limit,
            dashboard_address=config.dashboard_address,
            silence_logs=logging.ERROR,
        )
    else:
        from connectome.jobqueue import make_jobqueue_cluster  # SLURM / PBS

        cluster = make_jobqueue_cluster(config)
    client = Client(cluster)
    _announce(client, quiet)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _announce(client, quiet: bool) -> None:
    if not quiet:
        link = client.dashboard_link
        print(f"dask dashboard: {link}" if link else "dask dashboard: unavailable", file=sys.stderr)
