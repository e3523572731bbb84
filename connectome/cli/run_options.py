"""Options shared by every command that runs stages on a cluster."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from connectome.cli.arg_types import positive_int

if TYPE_CHECKING:
    from connectome.cluster.client import ClusterConfig


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default=None, metavar="local|slurm|pbs|tcp://HOST:PORT",
                        help="where blocks run (default: the config's cluster, else a local cluster)")
    parser.add_argument("--profile", default=None, metavar="NAME|FILE.yaml",
                        help="cluster settings from deploy/profiles/NAME.yaml or a YAML file (e.g. slurm-gpu)")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="local worker processes (default 2); on slurm/pbs, caps the CPU workers")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard finished blocks whose layout or parameters changed, and start again")
    parser.add_argument("--strict-input", action="store_true",
                        help="refuse a zarr input with missing chunk files (by default: a warning; they read as 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cluster_settings(args: argparse.Namespace, base: ClusterConfig | None = None) -> ClusterConfig:
    """The cluster a command runs on: the config's section (or defaults), then --profile, --cluster, --workers."""
    from connectome.cluster.client import JOBQUEUE_KINDS, ClusterConfig, parse_cluster_option, resolve_profile
    from connectome.cluster.jobqueue import jobs_for_workers

    base = base or ClusterConfig()
    if args.profile:
        base = ClusterConfig.model_validate({**base.model_dump(exclude_unset=True), "profile": args.profile})
    cluster = parse_cluster_option(args.cluster, base)
    if args.workers:
        cluster = cluster.model_copy(update={"n_workers": args.workers})
        if cluster.kind in JOBQUEUE_KINDS:  # the command line wins over the config's and profile's maximum
            resolved = resolve_profile(cluster)
            cluster = resolved.model_copy(update={"maximum_jobs": jobs_for_workers(args.workers, resolved)})
    return cluster


def start_local_workers_early(args: argparse.Namespace, base: ClusterConfig | None = None) -> None:
    """Where the command's blocks will run on forked local workers (`cluster_settings(args, base)`), start the server
    they fork from now: its imports (torch, the stages) then run while the command imports and plans, instead of
    after (a `segment` of a small volume 8.1 -> 5.8 s). A setting the command will refuse is left to it to say."""
    from connectome.cluster.client import resolve_profile, start_worker_server
    from connectome.core.errors import UserError

    try:
        config = resolve_profile(cluster_settings(args, base))
    except UserError:
        return
    start_worker_server(config)
