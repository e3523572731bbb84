"""Finished blocks that no longer describe their inputs, found before a run computes anything: a block whose output
chunks were lost, or whose input files outside the output changed since it ran (a raw volume re-ingested or
re-aligned in place), and, through the whole chain, every finished block of a later stage whose read box overlaps
what those blocks will rewrite. They are forgotten (persisted) before any of them runs again, so a run killed
half-way still recomputes the later stages' blocks."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np

from connectome.core.geometry import Box
from connectome.engine.markers import DoneMarkers
from connectome.engine.runner import fingerprint

if TYPE_CHECKING:
    from connectome.engine.plan import Plan

# output address -> the write boxes that will be rewritten (None: all of it, or boxes of another volume frame)
Rewritten = dict[str, "list[Box] | None"]


MOST_BOXES = 10_000  # more rewritten blocks than this: a later stage's finished blocks that read them all go


def forget_stale(plan: Plan, rewritten: Rewritten | None = None, start: int = 0) -> dict[str, int]:
    """Forget the stale finished blocks of the stages of `plan` from `start` on, and of the later stages that read
    them or what `rewritten` says will be rewritten (see the module docstring); one line per stage that has some.
    Returns stage -> blocks forgotten."""
    rewritten = dict(rewritten or {})
    forgotten: dict[str, int] = {}
    for planned in plan.stages[start:]:
        stage, grid = planned.stage, planned.grid
        markers = DoneMarkers(plan.work_dir, stage.name)
        done = markers.done_mask(len(grid))
        if not done.any() or not markers.resumes(fingerprint(stage, grid)):  # every block of it is written
            rewritten.update({address: None for address in stage.output_addresses.values()})
            continue
        stale = markers.stale_blocks()
        readers: set[int] = set()
        for address in stage.input_addresses.values():
            if address not in rewritten:
                continue
            boxes = rewritten[address]
            if boxes is None or not _same_frame(plan, address, grid.volume):
                readers = {int(i) for i in np.flatnonzero(done)}
                break
            readers.update(i for box in boxes for i in grid.reading(box) if done[i])
        again = set(stale) | readers
        written = np.flatnonzero(~done)  # (blocks never finished are written too)
        if len(again) + len(written) > MOST_BOXES:
            rewritten.update({address: None for address in stage.output_addresses.values()})
        else:
            boxes = [grid.block(int(i)).write_box for i in sorted(again | {int(i) for i in written})]
            for address in stage.output_addresses.values():
                rewritten[address] = None if address in rewritten and rewritten[address] is None else boxes
        if not again:
            continue
        markers.forget(again)
        forgotten[stage.name] = len(again)
        print(f"connectome: {stage.name}: {_said(stale, readers)}; running them again", file=sys.stderr)
    return forgotten


def _same_frame(plan: Plan, address: str, volume: Box) -> bool:
    """Whether the stage of `plan` that writes `address` tiles the same volume box as `volume` (block boxes of the
    two grids are then in one frame)."""
    return any(p.grid.volume == volume for p in plan.stages if address in p.stage.output_addresses.values())


def _said(stale: dict[int, tuple[str, str | None]], readers: set[int]) -> str:
    """What happened to the forgotten blocks, for the one line a stage prints."""
    parts = []
    lost = {i: v for i, v in stale.items() if v[1] is None}
    changed = {i: v for i, v in stale.items() if v[1] is not None}
    if lost:
        first = min(lost)
        parts.append(f"{len(lost)} finished block(s) lost their output (block {first}: {lost[first][0]} changed or "
                     "is gone)")
    if changed:
        first = min(changed)
        path, name = changed[first]
        parts.append(f"{len(changed)} finished block(s) read input {name}, which changed since they ran (block "
                     f"{first}: {path} changed or is gone)")
    others = readers - set(stale)
    if others:
        parts.append(f"{len(others)} finished block(s) read what an earlier stage computes again (block "
                     f"{min(others)})")
    return "; ".join(parts)
