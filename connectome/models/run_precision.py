"""One precision for every block of a stage run.

`precision: auto` means bfloat16 on a GPU and on a CPU with native bfloat16, else float32
(`inference.resolve_precision`). Resolved on each worker, a run on workers of mixed hardware, or one resumed on
another machine, would mix the two blockwise, and bfloat16 and float32 outputs differ. So a stage run resolves
`auto` once, before its blocks: to the precision its finished blocks recorded (a resumed run stays one
precision), else to what `auto` gives on a worker of the stage's pool; every block computes in that precision
(bfloat16 also where it is not native: emulated, slower, the same arithmetic up to the order of float sums) and
records it in its done-marker summary.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def worker_precision(precision: str, device: str | None) -> str:
    """What `precision` resolves to here for `device` (None: this worker's default device, as `get_model`)."""
    from connectome.cluster.model_cache import default_device
    from connectome.models.inference import resolve_precision
    from connectome.models.registry import pick_device

    return resolve_precision(precision, pick_device(device or default_device()))


def run_precision(precision: str, device: str | None, on_worker: Callable[[Callable[[], Any]], Any],
                  finished: Callable[[], dict[int, dict]]) -> str:
    """The one precision of a stage run: `precision` unless auto; for auto the one the finished blocks
    recorded, else what auto resolves to on a worker (`on_worker`)."""
    if precision != "auto":
        return precision
    recorded = {s.get("precision") for s in finished().values()} - {None}
    if len(recorded) == 1:
        return str(recorded.pop())
    return str(on_worker(functools.partial(worker_precision, "auto", device)))


class OnePrecision:
    """For a stage whose params have `precision` and `device`: its blocks compute in the run's one precision."""

    params: Any
    precision_used: str | None = None  # set by before_blocks; None where blocks are processed without the runner

    def before_blocks(self, on_worker, finished) -> None:
        self.precision_used = run_precision(self.params.precision, self.params.device, on_worker, finished)

    def block_precision(self) -> str:
        """The precision this block computes in: the run's, else the stage's own resolved here."""
        return worker_precision(self.precision_used or self.params.precision, self.params.device)


def recorded_precision(work_dir: str, stage: str) -> str | None:
    """The precision a stage's finished blocks computed in (None when they recorded none; 'mixed' for blocks of
    a run from before precisions were kept that differ)."""
    from connectome.engine.markers import DoneMarkers

    found = {s.get("precision") for s in DoneMarkers(work_dir, stage).summaries().values()} - {None}
    return None if not found else found.pop() if len(found) == 1 else "mixed"
