"""Options shared by every command that runs stages on a cluster."""

from __future__ import annotations

import argparse


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default=None, metavar="local|slurm|pbs|tcp://HOST:PORT",
                        help="where blocks run (default: the config's cluster, else a local cluster)")
    parser.add_argument("--workers", type=int, default=None, help="local worker processes (default 2)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard finished blocks whose layout or parameters changed, and start again")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
