"""Per stage: blocks done / total, for a config or an output directory."""

from __future__ import annotations

import glob
import os

from connectome.cli.main import print_result
from connectome.core.errors import UserError
from connectome.engine.config import load_config
from connectome.engine.markers import DoneMarkers


def add_arguments(parser) -> None:
    parser.add_argument("target", help="CONFIG.yaml or OUT_DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def stage_status(work_dir: str) -> list[dict]:
    rows = []
    for fp in sorted(glob.glob(os.path.join(work_dir, ".connectome", "done", "*", "fingerprint.json")),
                     key=os.path.getmtime):
        name = os.path.basename(os.path.dirname(fp))
        markers = DoneMarkers(work_dir, name)
        fingerprint = markers.fingerprint()
        if fingerprint is None:  # removed since the glob (an overwriting run started)
            continue
        total = int(fingerprint.get("blocks", 0))
        rows.append({"stage": name, "done": len(markers.done()), "total": total})
    return rows


def run(args) -> int:
    target = args.target
    if os.path.isfile(target):
        config = load_config(target)
        work_dir, names = config.output, [s.stage for s in config.stages]
    elif os.path.isdir(target):
        work_dir, names = target, None
    else:
        raise UserError(f"{target}: no such config file or output directory")
    rows = stage_status(work_dir)
    if names is not None:
        seen = {r["stage"] for r in rows}
        rows += [{"stage": n, "done": 0, "total": None} for n in names if n not in seen]
    text = "\n".join(
        f"{r['stage']:<16} {r['done']:>8} / {r['total'] if r['total'] is not None else '?'} blocks"
        + ("  complete" if r["total"] and r["done"] == r["total"] else "")
        for r in rows
    ) or f"{work_dir}: no stage has started"
    print_result(args, {"output": work_dir, "stages": rows}, text)
    return 0
