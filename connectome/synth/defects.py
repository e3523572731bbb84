"""Section defects of serial-section EM: xy shifts, missing (blank) sections, brightness drift."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class Defects:
    """Which section defects to add; all off by default.

    Shifts displace whole sections in the image only (labels and tissue stay aligned): section z of
    `raw` shows the aligned section translated by `section_shifts[z]` = (dy, dx) pixels, i.e.
    raw[z, y, x] = aligned[z, y - dy, x - dx]. Section 0 is the reference (shift 0). The exposed
    border is filled by reflection.
    """

    shifts: bool = False
    max_shift_px: float = 6.0
    jump_probability: float = 0.15  # per section, an abrupt jump instead of small jitter
    subpixel: bool = False  # integer shifts unless set
    missing: bool = False
    missing_sections: int = 1  # blanked to `blank_value` and marked as defect in `tissue`
    blank_value: int = 0
    drift: bool = False
    drift_gain: float = 0.15  # peak relative change of contrast across sections
    drift_offset: float = 0.06  # peak change of brightness, fraction of full scale

    @classmethod
    def from_names(cls, names: str | list[str], **kw) -> Defects:
        """'shifts,missing,drift' -> Defects with those switched on."""
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        unknown = sorted(set(names) - {"shifts", "missing", "drift"})
        if unknown:
            raise ValueError(f"unknown defect(s) {', '.join(unknown)}; choose from shifts, missing, drift")
        return cls(**{n: True for n in names}, **kw)


@dataclass
class SectionRecord:
    """What the defects did, per section."""

    shifts: np.ndarray  # (Z, 2) float (dy, dx) pixels
    missing: list[int] = field(default_factory=list)
    gain: np.ndarray | None = None  # (Z,)
    offset: np.ndarray | None = None  # (Z,)


def draw(seed_seq: np.random.SeedSequence, n_sections: int, d: Defects) -> SectionRecord:
    """Draw every defect from its own stream, so switching one on leaves the others unchanged."""
    r_shift, r_missing, r_drift = (np.random.default_rng(s) for s in seed_seq.spawn(3))
    shifts = np.zeros((n_sections, 2))
    if d.shifts and n_sections > 1:
        # mean-reverting jitter between neighbouring sections, with occasional abrupt jumps
        step = r_shift.normal(0, 0.3 * d.max_shift_px, (n_sections, 2))
        jumps = r_shift.random(n_sections) < d.jump_probability
        jump = r_shift.uniform(-d.max_shift_px, d.max_shift_px, (n_sections, 2))
        for z in range(1, n_sections):
            base = jump[z] if jumps[z] else 0.7 * shifts[z - 1]
            shifts[z] = np.clip(base + step[z], -d.max_shift_px, d.max_shift_px)
        if not d.subpixel:
            shifts = np.round(shifts)
        shifts += 0.0  # no negative zeros in the record
    missing: list[int] = []
    if d.missing and n_sections > 2:
        k = min(d.missing_sections, n_sections - 2)
        missing = sorted(int(z) for z in r_missing.choice(np.arange(1, n_sections - 1), k, replace=False))
    gain = offset = None
    if d.drift:
        def slow(r):
            walk = np.cumsum(r.standard_normal(n_sections))
            walk -= walk.mean()
            peak = np.abs(walk).max()
            return walk / peak if peak > 0 else walk

        gain = 1.0 + d.drift_gain * slow(r_drift)
        offset = d.drift_offset * slow(r_drift)
    return SectionRecord(shifts, missing, gain, offset)


def shift_sections(img: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Translate each section by its (dy, dx); linear interpolation, exact for whole pixels."""
    out = img.copy()
    for z, (dy, dx) in enumerate(shifts):
        if dy or dx:
            out[z] = ndi.shift(img[z], (dy, dx), order=1, mode="reflect")
    return out


def apply_drift(img: np.ndarray, record: SectionRecord) -> np.ndarray:
    if record.gain is None or record.offset is None:  # draw() sets both or neither
        return img
    return img * record.gain[:, None, None].astype(np.float32) + record.offset[:, None, None].astype(np.float32)
