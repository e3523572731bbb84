"""Finished blocks that no longer describe their inputs, found before a run computes anything: a block whose output
chunks were lost, or that read a file from outside the output that changed since (a raw volume re-ingested or
re-aligned in place), and, through the whole chain, every finished block of a later stage whose read box overlaps
what those blocks will rewrite. They are forgotten (persisted) before any of them runs again, so a run killed
half-way still recomputes the later stages' blocks; a stage with a global step whose blocks read a changed file
runs its step again too (steps such as the section levels read the raw themselves)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from connectome.core.errors import UserError
from connectome.core.geometry import BlockGrid, Box
from connectome.engine.markers import SUPER, DoneMarkers
from connectome.engine.runner import fingerprint

if TYPE_CHECKING:
    from connectome.engine.plan import Plan

# output address -> the write boxes that will be rewritten (None: all of it)
Rewritten = dict[str, "list[Box] | None"]
MOST_BOXES = 10_000  # more rewritten blocks than this: a later stage's finished blocks that read them all go


def changed_input_blocks(markers: DoneMarkers) -> tuple[dict[int, tuple[str, str]], dict]:
    """(finished block -> (a changed file it read, the input's name), the changed files: super-block -> input ->
    keys). Which blocks read a file comes from the block layout in the stage's fingerprint and the input's chunking,
    for a stage whose blocks read within their read box only (`reads_only_read_box`); for any other, and for a file
    no block's read box holds (a file renamed, a codec changed), every finished block of the super-block that
    recorded it."""
    changed = markers.changed_inputs()
    if not changed:
        return {}, {}
    state = markers.load()
    ends = [b for _, b in state.merged()]
    done = state.mask(max(ends)) if ends else np.zeros(0, bool)
    files_of = _BlockFiles(markers)
    out: dict[int, tuple[str, str]] = {}
    for k, inputs in sorted(changed.items()):
        blocks = [int(i) for i in np.flatnonzero(done[k * SUPER:(k + 1) * SUPER]) + k * SUPER]
        for name, keys in inputs.items():
            read_by: dict[str, list[int]] = {}
            for index in blocks:
                for key in files_of(index, name) or keys:  # (None: any block may have read any of them)
                    if key in keys:
                        read_by.setdefault(key, []).append(index)
            for key, path in keys.items():
                for index in read_by.get(key) or blocks:
                    out.setdefault(index, (path, name))
    return out, changed


class _BlockFiles:
    """The input files a finished block of a stage read, from the block layout its fingerprint records and the
    input volume it names (opened once); None where the stage may read beyond its read box or either is lost."""

    def __init__(self, markers: DoneMarkers):
        from connectome.engine.registry import stage_class

        self.grid: BlockGrid | None = None
        self.volumes: dict[str, object] = {}
        try:
            fp = markers.fingerprint() or {}
            if stage_class(fp["stage"]).reads_only_read_box:
                self.grid = BlockGrid.from_layout(fp["layout"])
            self.addresses = {name: (a if "://" in a or os.path.isabs(a) else os.path.join(markers.base, a))
                              for name, a in fp.get("inputs", {}).items()}
        except (KeyError, TypeError, ValueError, UserError):
            self.grid = None

    def __call__(self, index: int, name: str) -> list[str] | None:
        if self.grid is None or name not in self.addresses:
            return None
        if name not in self.volumes:
            from connectome.io import open_volume

            try:
                self.volumes[name] = open_volume(self.addresses[name])
            except (UserError, OSError, ValueError):
                self.volumes[name] = None
        volume = self.volumes[name]
        source = None if volume is None else volume.source_files(self.grid.block(index).read_box)  # type: ignore
        return None if source is None else source[1]


def forget_stale(plan: Plan, rewritten: Rewritten | None = None, start: int = 0) -> dict[str, int]:
    """Forget the stale finished blocks of the stages of `plan` from `start` on, and of the later stages that read
    them or what `rewritten` says will be rewritten (see the module docstring); one line per stage that has some.
    Returns stage -> blocks forgotten."""
    rewritten = dict(rewritten or {})
    forgotten: dict[str, int] = {}
    for planned in plan.stages[start:]:
        stage, grid = planned.stage, planned.grid
        markers = DoneMarkers(plan.work_dir, stage.name)
        try:
            state = markers.load()
            done = state.mask(len(grid))
            resumes = done.any() and markers.resumes(fingerprint(stage, grid))
            lost = markers.lost_blocks(state=state) if resumes else {}
            del state  # (not held beside the input tables: loaded again where an input changed)
            changed, files = changed_input_blocks(markers) if resumes else ({}, {})
        except UserError:  # damaged markers: refused further on, or started again with --overwrite
            resumes = False
        if not resumes:  # every block of it is written
            rewritten.update({address: None for address in stage.output_addresses.values()})
            continue
        readers: set[int] = set()
        for address in stage.input_addresses.values():
            if address not in rewritten:
                continue
            boxes = rewritten[address]
            if boxes == []:  # nothing of it is rewritten
                continue
            if boxes is None or not _same_frame(plan, address, grid.volume) or not stage.reads_only_read_box:
                readers = {int(i) for i in np.flatnonzero(done)}
                break
            readers.update(i for box in boxes for i in grid.reading(box) if done[i])
        again = set(lost) | set(changed) | readers
        written = np.flatnonzero(~done)  # (blocks never finished are written too)
        if len(again) + len(written) > MOST_BOXES:
            rewritten.update({address: None for address in stage.output_addresses.values()})
        else:
            boxes = [grid.block(int(i)).write_box for i in sorted(again | {int(i) for i in written})]
            for address in stage.output_addresses.values():
                rewritten[address] = None if address in rewritten and rewritten[address] is None else boxes
        if not again:
            continue
        step = planned.step()
        if step is not None and (changed or readers):  # a step may read the changed input itself (first: a run
            DoneMarkers(plan.work_dir, step.name).clear()  # killed after it still runs the step again)
        markers.forget(again)
        if files:
            markers.drop_inputs(files)  # their readers run again and record them as they are now
        forgotten[stage.name] = len(again)
        print(f"connectome: {stage.name}: {_said(lost, changed, readers)}; running them again", file=sys.stderr)
    return forgotten


def _same_frame(plan: Plan, address: str, volume: Box) -> bool:
    """Whether the stage of `plan` that writes `address` tiles the same volume box as `volume` (block boxes of the
    two grids are then in one frame)."""
    return any(p.grid.volume == volume for p in plan.stages if address in p.stage.output_addresses.values())


def _said(lost: dict[int, str], changed: dict[int, tuple[str, str]], readers: set[int]) -> str:
    """What happened to the forgotten blocks, for the one line a stage prints."""
    parts = []
    if lost:
        first = min(lost)
        parts.append(f"{len(lost)} finished block(s) lost their output (block {first}: {lost[first]} changed or "
                     "is gone)")
    if changed:
        first = min(changed)
        path, name = changed[first]
        parts.append(f"{len(changed)} finished block(s) read input {name}, which changed since they ran (block "
                     f"{first}: {path} changed or is gone)")
    others = readers - set(lost) - set(changed)
    if others:
        parts.append(f"{len(others)} finished block(s) read what an earlier stage computes again (block "
                     f"{min(others)})")
    return "; ".join(parts)
