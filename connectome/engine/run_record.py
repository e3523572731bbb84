"""The records of the runs that made an output directory, written once every stage of a run has finished:

- `run.json`: the last run's config (its stages with the parameters it gave them), to copy into a config; `graph`
  reads which stages it ran, `view` its input;
- `runs.json`: `{"runs": [config, ...]}`, the last record of each kind of run that wrote into the directory, oldest
  first. A run's record replaces every earlier one whose stages it all ran (a re-run, `reconstruct` after
  `segment`); the others stay, so `connectome synapses` into a `segment` output keeps the segmentation's record
  beside its own (run.json, the last run's, was all there was: it lost the segmentation's). A directory written
  before runs.json existed starts it with the record its run.json holds.

The records are not merged into one config: one config has one input, voxel size and block shape, and `synapses`
runs into a `segment` output with its own (another block shape, the aligned volume as its raw); and run.json
stays the last run's, which `graph` relies on (the types of the last run that ran the synapses are the current
ones). Neither file is read to resume: a run resumes from its stages' done-markers (`engine.markers`).
"""

from __future__ import annotations

import contextlib
import json
import os

from connectome.core.errors import unwritable

RUN = "run.json"
RUNS = "runs.json"


def stage_names(record: dict) -> list[str]:
    """The stages a run record (a config as JSON) ran, in order; [] for a record that names none."""
    stages = record.get("stages") if isinstance(record, dict) else None
    return [s["stage"] for s in stages or () if isinstance(s, dict) and isinstance(s.get("stage"), str)]


def kept_runs(out: str) -> list[dict]:
    """The run records of `out` (`RUNS`; where it has none or it cannot be read, the one `RUN` holds, if any)."""
    for name in (RUNS, RUN):
        try:
            with open(os.path.join(out, name)) as f:
                value = json.load(f)
        except (OSError, ValueError):
            continue
        runs = value.get("runs") if name == RUNS and isinstance(value, dict) else [value]
        if isinstance(runs, list):
            return [r for r in runs if stage_names(r)]
    return []


def record_run(out: str, record: dict) -> None:
    """Record a finished run (`record`: its config as JSON) in the local output directory `out`: `RUNS` first,
    then `RUN` (each written aside and renamed into place; a file that cannot be written is named in full)."""
    ran = set(stage_names(record))
    runs = [r for r in kept_runs(out) if not set(stage_names(r)) <= ran] + [record]
    _write(os.path.join(out, RUNS), {"runs": runs}, f"{RUNS}.tmp{os.getpid()}")  # (engine.litter's pattern)
    _write(os.path.join(out, RUN), record, f".{RUN}.{os.getpid()}.tmp")


def _write(path: str, value: dict, tmp_name: str) -> None:
    tmp = os.path.join(os.path.dirname(path), tmp_name)
    try:
        with open(tmp, "w") as f:
            json.dump(value, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise unwritable(e, path) from None
