"""A section range of a volume (`ADDR[z0:z1]`) as a volume of its own, read-only."""

from __future__ import annotations

import dataclasses

import numpy as np

from connectome.core.errors import UserError
from connectome.core.geometry import Box
from connectome.io.base import Volume, VolumeMeta


class SectionRange(Volume):
    """Sections `start`..`stop`-1 of `inner`; coordinates start at 0 at section `start`."""

    def __init__(self, address: str, inner: Volume, sections: slice):
        super().__init__(address)
        depth = inner.shape[0]
        if sections.step not in (None, 1):
            raise UserError(f"{address}: a section range takes no step")
        beyond = [v for v in (sections.start, sections.stop) if v is not None and not -depth <= v <= depth]
        if beyond:  # Python would clip it: a split of fewer sections than asked, without a word
            raise UserError(f"{address}: section {beyond[0]} lies beyond the volume's {depth} sections; expected "
                            f"bounds from {-depth} to {depth} (an open end, [z0:], runs to the last)")
        self.start, self.stop, _ = sections.indices(depth)
        if self.stop <= self.start:
            raise UserError(f"{address}: the section range selects no sections (the volume has {depth})")
        self.inner = inner
        m = inner.meta
        self._meta = dataclasses.replace(m, shape=(self.stop - self.start, *m.shape[1:]),
                                         offset=(m.offset[0] + self.start, *m.offset[1:]))

    @property
    def meta(self) -> VolumeMeta:
        return self._meta

    def _read(self, box: Box) -> np.ndarray:
        return self.inner.read(box.shift((self.start, 0, 0)))

    def source_files(self, box: Box) -> tuple[str, list[str]] | None:
        return self.inner.source_files(box.intersect(self.box).shift((self.start, 0, 0)))

    def section_footprints(self) -> dict[int, tuple[int, int, int, int]]:
        return {z - self.start: f for z, f in self.inner.section_footprints().items() if self.start <= z < self.stop}
