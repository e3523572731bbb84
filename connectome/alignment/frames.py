"""Which frame a label volume is in, the raw (unaligned) sections or an alignment's aligned frame, as far as its
metadata and the run records beside it tell; so that `connectome evaluate` can say when a segmentation of an
aligned volume is scored against ground truth that is not in that frame (the two then have the same shape and
nothing else fails: a walk-through scored VOI 2.96 against 2.41 with the labels carried into the aligned frame).

What is read, all small JSON files, and never the volumes:
- a volume `align_labels` / `unalign_labels` wrote carries its frame in its metadata (`connectome.frame`);
- `aligned` and `defects` of an `align` output, and `normalized_sections` where it was made from them, are in the
  aligned frame (the run records of the folder they lie in: `engine.run_record`);
- any other volume a run wrote into a folder (a `segment` output's segmentation) is in the frame of the volume that
  run read (its record's `input`), where every run recorded there read one in the same frame.
A zarr volume only (other addresses: unknown). Anything that cannot be read is unknown: None, never an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

# stage -> its outputs in the aligned frame it makes (`align`), or in the frame of its input `raw` (the others)
ALIGNED_BY: dict[str, tuple[str, ...]] = {"align": ("aligned", "defects")}
SAME_FRAME: dict[str, tuple[str, ...]] = {"section_normalize": ("normalized_sections",)}
DEPTH = 4  # records followed from a volume to the alignment it comes from, at most


@dataclass(frozen=True)
class Frame:
    frame: str  # "aligned" or "raw"
    alignment: str  # the `align` output directory whose transforms define the aligned frame ("" where unknown)
    raw: str = ""  # the raw volume that alignment aligned ("" where unknown)


def record_frame(address: str, frame: str, stage: str, source: str, alignment: str) -> None:
    """Record in the metadata of the zarr volume at `address` (a local one; others are left as they are) that it is
    in `frame` ("aligned" or "raw") of the `align` output directory `alignment`, written by `stage` from `source`."""
    import zarr

    path = _zarr_path(address)
    if path is None:
        return
    node = zarr.open(store=path, mode="r+")  # the group, or a bare array: where its metadata lives
    own = dict(node.attrs.get("connectome", {}))  # type: ignore[arg-type]
    own["frame"] = {"frame": frame, "stage": stage, "source": source, "alignment": alignment}
    node.attrs["connectome"] = own


def _zarr_path(address: str) -> str | None:
    try:
        from connectome.core.address import parse_address

        parsed = parse_address(address)
    except Exception:  # noqa: BLE001 - an address that cannot be parsed: unknown, the evaluation says what is wrong
        return None
    if parsed.kind != "zarr" or "://" in parsed.base:
        return None
    return os.path.normpath(os.path.abspath(parsed.base))


def _recorded_frame(path: str) -> dict | None:
    """`connectome.frame` in the metadata of the zarr group (or array) at `path`, if any."""
    try:
        with open(os.path.join(path, "zarr.json")) as f:
            attrs = json.load(f).get("attributes", {})
    except (OSError, ValueError, AttributeError):
        return None
    own = attrs.get("connectome") if isinstance(attrs, dict) else None
    frame = own.get("frame") if isinstance(own, dict) else None
    return frame if isinstance(frame, dict) and frame.get("frame") in ("aligned", "raw") else None


def _records(directory: str) -> list[dict]:
    from connectome.engine.run_record import kept_runs

    try:
        return [r for r in kept_runs(directory) if isinstance(r, dict)]
    except Exception:  # noqa: BLE001 - a record that cannot be read tells nothing
        return []


def _resolve(value: str, record: dict, directory: str) -> str:
    """A stage's input or output as a record names it: `raw` is the run's input, a bare name a volume in its output
    directory, anything else an address."""
    if value == "raw":
        value = str(record.get("input", ""))
    elif "/" not in value and os.sep not in value and "#" not in value:
        value = os.path.join(str(record.get("output") or directory), value)
    return _zarr_path(value) or value


def _alignment_raw(alignment: str) -> str:
    """The raw volume the `align` run of the output directory `alignment` read ("" where none is recorded)."""
    for record in _records(alignment):
        if any(isinstance(s, dict) and s.get("stage") == "align" for s in record.get("stages") or ()):
            return str(record.get("input", ""))
    return ""


def volume_frame(address: str, depth: int = DEPTH) -> Frame | None:
    """The frame of the volume at `address` (see the module doc), or None where it is not known."""
    path = _zarr_path(address)
    if path is None or depth <= 0:
        return None
    recorded = _recorded_frame(path)
    if recorded is not None:
        alignment = str(recorded.get("alignment", ""))
        return Frame(recorded["frame"], alignment, _alignment_raw(alignment) if alignment else "")
    directory, name = os.path.split(path)
    records = _records(directory)
    others: list[Frame | None] = []
    for record in records:
        stages = [s for s in record.get("stages") or () if isinstance(s, dict)]
        for stage in stages:
            kind, outputs = str(stage.get("stage")), stage.get("outputs") or {}
            named = {n: _resolve(str(outputs.get(n, n)), record, directory)
                     for n in ALIGNED_BY.get(kind, ()) + SAME_FRAME.get(kind, ())}
            if path not in named.values():
                continue
            if kind in ALIGNED_BY:
                return Frame("aligned", directory, str(record.get("input", "")))
            inputs = stage.get("inputs") or {}
            source = _resolve(str(inputs.get("raw", "raw")), record, directory)
            return volume_frame(source, depth - 1)
        if not any(s.get("stage") in ALIGNED_BY for s in stages) and record.get("input"):
            others.append(volume_frame(str(record["input"]), depth - 1))
    if others and all(f is not None and f == others[0] for f in others):
        return others[0]
    return None


def _same(a: str, b: str) -> bool:
    return not a or not b or os.path.normpath(a) == os.path.normpath(b)


def frame_warning(seg: str, gt: str) -> str | None:
    """The one line `connectome evaluate` prints where the segmentation `seg` is in an aligned frame and the ground
    truth `gt` is not known to be in it, or `seg` was carried back to the raw frame (`unalign_labels`) and `gt` is
    in the aligned one; None otherwise, and wherever the records cannot be read."""
    try:
        s = volume_frame(seg)
        if s is None:
            return None
        g = volume_frame(gt)
    except Exception:  # noqa: BLE001 - a warning only: nothing it cannot read stops the evaluation
        return None
    raw, out = s.raw or "RAW", s.alignment or "OUT"
    if s.frame == "raw":
        if g is None or g.frame != "aligned":
            return None
        return (f"connectome evaluate: warning: seg {seg} is in the raw (unaligned) frame of {out}, gt {gt} in its "
                f"aligned frame: the scores compare different pixels; score the segmentation of the aligned volume "
                f"against it instead")
    if g is not None and g.frame == "aligned" and _same(g.alignment, s.alignment):
        return None
    where = ("is in the aligned frame of another alignment" if g is not None and g.frame == "aligned"
             else "is in the raw frame" if g is not None else "is not known to be in that frame")
    return (f"connectome evaluate: warning: seg {seg} was made from the aligned volume of {out}, gt {gt} {where}: "
            f"if the gt is labelled on the raw (unaligned) sections, the scores compare different pixels; carry it "
            f"into the aligned frame with `connectome align {raw} {out} --labels {gt}` (with the alignment's own "
            f"options; it writes {os.path.join(out, 'aligned_labels')}) and score against that, or bring the "
            f"segmentation to the raw frame with `--unalign {seg}`")


def mask_frame_warning(command: str, raw: str, mask: str) -> str | None:
    """The one line `connectome COMMAND` prints where `--mask` is not known to be in the frame of the raw it masks:
    `raw` is in an aligned frame and `mask` is not known to be in it, or `mask` is in an aligned frame and `raw` is
    not (the two then have the same shape and nothing else fails: the mask leaves out other pixels than it was made
    for); None otherwise, and wherever the records cannot be read."""
    try:
        r, m = volume_frame(raw), volume_frame(mask)
    except Exception:  # noqa: BLE001 - a warning only: nothing it cannot read stops the run
        return None
    if r is not None and r.frame == "aligned":
        if m is not None and m.frame == "aligned" and _same(m.alignment, r.alignment):
            return None
        where = ("is in the aligned frame of another alignment" if m is not None and m.frame == "aligned"
                 else "is in the raw (unaligned) frame" if m is not None else "is not known to be in that frame")
        out = r.alignment or "OUT"
        return (f"connectome {command}: warning: raw {raw} is aligned ({out}), --mask {mask} {where}: if the mask was "
                f"made on the unaligned sections, it leaves out other voxels than it was made for; use "
                f"{os.path.join(out, 'defects')}, or a mask made from the aligned volume (`connectome tissue "
                f"{os.path.join(out, 'aligned')} ...`), or carry it with `connectome align {r.raw or 'RAW'} {out} "
                f"--labels {mask}`")
    if m is not None and m.frame == "aligned" and (r is None or r.frame == "raw"):
        out = m.alignment or "OUT"
        return (f"connectome {command}: warning: --mask {mask} is in the aligned frame of {out}, raw {raw} is not "
                f"known to be in it: the mask leaves out other voxels than it was made for; "
                f"give the aligned volume ({os.path.join(out, 'aligned')}) as the raw")
    return None
