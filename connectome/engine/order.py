"""The order in which a stage's blocks are handed to workers.

Blocks run in index order, in batches of consecutive blocks. For a stage whose blocks read outputs
of neighbouring blocks (`BlockStage.reads_neighbours`), a block is handed out only once every
earlier block whose write box its read box overlaps has finished (`BlockGrid.upstream`), so the
result equals running the blocks one by one in index order, while blocks that do not read each
other still run in parallel (a wavefront across the grid).
"""

from __future__ import annotations

import heapq

import numpy as np

from connectome.core.geometry import BlockGrid


class BlockOrder:
    """Hands out the blocks of `todo` (ascending indices) as dependencies allow."""

    def __init__(self, grid: BlockGrid, todo: np.ndarray, reads_neighbours: bool = False):
        self.todo = todo
        self.pos = 0
        self.handed = 0
        self.dependent = reads_neighbours
        if not reads_neighbours:
            return
        pending = set(int(i) for i in todo)
        self.waiting: dict[int, int] = {}
        self.dependents: dict[int, list[int]] = {}
        self.ready: list[int] = []
        for i in pending:
            ups = [j for j in grid.upstream(i) if j in pending]
            self.waiting[i] = len(ups)
            for j in ups:
                self.dependents.setdefault(j, []).append(i)
            if not ups:
                self.ready.append(i)
        heapq.heapify(self.ready)

    def remaining(self) -> int:
        """Blocks not handed out yet."""
        return len(self.todo) - self.handed

    def take(self, size: int) -> list[int]:
        """Up to `size` blocks that may run now (possibly none while their dependencies run)."""
        if not self.dependent:
            batch = self.todo[self.pos : self.pos + size].tolist()
            self.pos += len(batch)
        else:
            batch = [heapq.heappop(self.ready) for _ in range(min(size, len(self.ready)))]
        self.handed += len(batch)
        return batch

    def finished(self, batch: list[int]) -> None:
        """Blocks of `batch` are done: release the blocks that waited only for them."""
        if not self.dependent:
            return
        for i in batch:
            for k in self.dependents.pop(i, ()):
                self.waiting[k] -= 1
                if self.waiting[k] == 0:
                    heapq.heappush(self.ready, k)
