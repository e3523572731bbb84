"""Per stage: blocks done / total, for a config or an output directory (its last started run's stages, those not
started yet included), and finished blocks whose output is gone (a chunk file deleted or changed since the block
wrote it; --checksum reads every chunk instead of trusting unchanged sizes and times)."""

from __future__ import annotations

import glob
import os

from connectome.cli.main import print_result
from connectome.core.errors import UserError


def add_arguments(parser) -> None:
    parser.add_argument("target", help="CONFIG.yaml or OUT_DIR")
    parser.add_argument("--checksum", action="store_true",
                        help="compare every output chunk's crc32 with the one recorded when it was written")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def stage_status(work_dir: str, checksum: bool = False) -> list[dict]:
    from connectome.engine.markers import DoneMarkers
    from connectome.engine.staleness import changed_input_blocks

    rows = []
    for fp in sorted(glob.glob(os.path.join(work_dir, ".connectome", "done", "*", "fingerprint.json")),
                     key=os.path.getmtime):
        name = os.path.basename(os.path.dirname(fp))
        markers = DoneMarkers(work_dir, name)
        fingerprint = markers.fingerprint()
        if fingerprint is None:  # removed since the glob (an overwriting run started)
            continue
        total = int(fingerprint.get("blocks", 0))
        lost: dict[int, tuple[str, str | None]] = {i: (p, None) for i, p in
                                                   markers.lost_blocks(checksum_all=checksum).items()}
        for index, found in changed_input_blocks(markers)[0].items():
            lost.setdefault(index, found)
        row = {"stage": name, "done": markers.count(), "total": total, "lost": len(lost)}
        if lost:
            path, read = lost[min(lost)]
            row["first_lost"] = {"block": min(lost), "file": path, **({"input": read} if read else {})}
        unreadable = _unreadable_output(work_dir, fingerprint.get("outputs"))
        if unreadable:
            row["unreadable"] = unreadable
        rows.append(row)
    return rows


def _unreadable_output(work_dir: str, outputs) -> dict | None:
    """{output, address, error} of the first output volume of a stage that cannot be opened (its metadata damaged
    or gone); None when all open."""
    from connectome.io import open_volume

    for name, address in (outputs or {}).items() if isinstance(outputs, dict) else ():
        if not isinstance(address, str):
            continue
        if "://" not in address and not os.path.isabs(address):  # recorded relative to the output directory
            address = os.path.join(work_dir, address)
        try:
            open_volume(address)
        except (UserError, OSError, ValueError) as e:
            return {"output": name, "address": address, "error": str(e).splitlines()[0] if str(e) else repr(e)}
    return None


def _line(r: dict, width: int = 16) -> str:
    """One stage's row, its name padded to `width` (the longest name of the table)."""
    if r["total"] is None:  # a stage of the config that has not started
        return f"{r['stage']:<{width}} {'':>8}   not started"
    text = f"{r['stage']:<{width}} {r['done']:>8} / {r['total']} blocks"
    if r.get("unreadable"):
        bad = r["unreadable"]
        return text + (f"  its output {bad['output']} cannot be read ({bad['error']}); a re-run with --overwrite "
                       "writes it again")
    if r.get("lost"):
        first = r["first_lost"]
        what = f"read input {first['input']}, which changed since" if first.get("input") else "lost their output"
        return text + (f"  {r['lost']} finished block(s) {what} (block {first['block']}: {first['file']}); a re-run "
                       "computes them again")
    return text + ("  complete" if r["total"] and r["done"] == r["total"] else "")


def local_folder(target: str) -> str:
    """Where the run state of `target` lies: a precomputed layer's is where `ingest` keeps it (inside a local layer,
    else beside the current folder); a `file://` address's, its folder; else `target` as it is."""
    if target.startswith("precomputed://"):
        from connectome.cli.ingest import work_dir_for

        return work_dir_for(target)
    return target[len("file://"):] if target.startswith("file://") else target


def run(args) -> int:
    from connectome.engine.config import load_config
    from connectome.engine.lock import running
    from connectome.engine.stage_list import read_stage_list

    target = local_folder(args.target)  # (a local precomputed layer that ingest wrote is its own output)
    names: list[str] | None
    if os.path.isfile(target):
        config = load_config(target)
        work_dir, names = config.output, [s.stage for s in config.stages]
    elif os.path.isdir(target):  # the stages its last started run planned, where it recorded them
        work_dir, names = target, [name for name, _ in read_stage_list(target) or ()] or None
    else:
        raise UserError(f"{target}: no such config file or output directory")
    rows = stage_status(work_dir, args.checksum)
    if names is not None:
        seen = {r["stage"] for r in rows}
        rows += [{"stage": n, "done": 0, "total": None, "lost": 0} for n in names if n not in seen]
    width = max([16, *(len(r["stage"]) for r in rows)])
    text = "\n".join(_line(r, width) for r in rows) or f"{work_dir}: no stage has started"
    holder = running(work_dir)
    if holder:
        text += f"\nrunning now: pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
    summary = {"output": work_dir, "stages": rows, "running": holder and {k: holder.get(k) for k in
                                                                        ("host", "pid", "since")}}
    print_result(args, summary, text)
    return 0
