"""Done-markers: which blocks of a stage are finished, their small summaries, and what they wrote.

A stage's markers live in `<work_dir>/.connectome/done/<stage>/`, next to a `fingerprint.json`
that records the block layout and the stage parameters. A re-run skips blocks that are marked;
a changed fingerprint is refused unless the caller asks to overwrite.

Markers are a few files, not one per block:
- a task (a batch of blocks walked by one worker) writes `p-<task>-<n>.json` every few seconds
  and at its end, holding the blocks it finished since its last file;
- the client folds these into one `s-<k>.json` per super-block (`SUPER` consecutive indices) at
  the start and end of a stage (`compact`), so a finished stage of 10^7 blocks is 2,500 files.
Every file appears atomically (written aside, then renamed) and only after the blocks it names
were written, so a marker always means "this block's output is complete". A file holds
`ranges` ([first, stop) runs of finished indices), `summaries` (index -> the non-empty summary a
block returned) and `chunks` (index -> output -> [chunk key, size, mtime_ns, crc32] of each chunk
the block wrote, size -1 for a chunk left unstored because it holds only the fill value), with
`roots` (output -> its array directory). `lost_blocks` compares those records with the disk.
Beside them, in files of their own that `load` never reads (`i-<task>-<n>.json`, folded into one
`inputs-<k>.json` per super-block): the size and mtime of each file the blocks read from outside the work
directory (input -> file key -> [size, mtime_ns]; one table per file, not per block; a key recorded twice with
different values is stored as changed, `CHANGED`). `changed_inputs` compares them with the disk;
`engine.staleness` maps a changed file to the blocks that read it.
A root inside the work directory is stored relative to it (the file says `"relative_roots": true`), so a
copied or moved output checks its own chunks; files written before then hold absolute roots, read as they are.

Fingerprints likewise: every absolute path inside the work directory (outputs, tables, inputs written by an
earlier stage) is compared and stored relative to it (`relative_paths`), so a moved output directory resumes;
a path outside it (the raw input) stays absolute, and moving that is a change. A fingerprint stored with
absolute paths (before 2026-12) is compared in the same relative form, so it resumes in place, and is
stored relative from then on. Beside a fingerprint, `left_out.json` holds the parameters it leaves out (at a
default, as before they existed: `tta` 1, `precision` auto) as they were asked, so that a refusal names them by
their value (`tta 1 -> 4`) rather than as unset; it is never compared.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import shutil
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from connectome.core.errors import UserError
from connectome.io.precomputed import COMPRESSED  # (suffixes a precomputed chunk file may carry)

FINGERPRINT = "fingerprint.json"
LEFT_OUT = "left_out.json"  # beside it: the parameters the fingerprint leaves out, as they were asked (`left_out`)
SUPER = 4096  # block indices per consolidated marker file
FLUSH_SECONDS = 2.0  # a task writes its finished blocks at least this often


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a block summary")


def _normalised(fingerprint: dict) -> dict:
    return json.loads(json.dumps(fingerprint, default=_json_default, sort_keys=True))


# fingerprint keys recorded only since runs were made without them (the stages' weight files, `weight_files`)
RECORDED_SINCE = ("weights", "consensus_weights")


def resumes(existing: dict | None, fingerprint: dict) -> bool:
    """Whether blocks finished under the stored fingerprint `existing` belong to a run of `fingerprint`
    (normalised): equal, or equal but for keys of `RECORDED_SINCE` that the older run did not record (and, in
    such a run, a model given as a path, which it recorded by its path and is now recorded by its file name)."""
    if existing is None:
        return False
    missing = [k for k in RECORDED_SINCE if k in fingerprint and k not in existing]
    if not missing:
        return existing == fingerprint
    now = {k: v for k, v in fingerprint.items() if k not in missing}
    old, new = existing.get("params"), now.get("params")
    if isinstance(old, dict) and isinstance(new, dict):
        by_name = {k: new[k] for k, v in old.items()
                   if isinstance(v, str) and os.sep in v and os.path.basename(v) == new.get(k)}
        existing = {**existing, "params": {**old, **by_name}}
    return existing == now


def relative_paths(value, base: str):
    """`value` (a normalised fingerprint, or a part of it) with every absolute path that is `base` or lies inside
    it written relative to `base` (`.` for `base` itself); other strings, and paths outside `base`, as they are."""
    if isinstance(value, str):
        if value == base:
            return "."
        if value.startswith(base + os.sep) and base != os.sep:
            return value[len(base) + 1:]
        return value
    if isinstance(value, dict):
        return {k: relative_paths(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, base) for v in value]
    return value


ADDRESSES = ("inputs", "outputs", "tables")  # fingerprint parts that hold only addresses


def _shown(before, now, base: str):
    """How a refusal names a stored address `before` that differs from the wanted address `now` (given in full):
    in full too, where it is stored relative to the work directory."""
    if isinstance(before, str) and not os.path.isabs(before) and "://" not in before \
            and isinstance(now, str) and os.path.isabs(now):
        return os.path.normpath(os.path.join(base, before))
    return before


def ranges_of(indices: Iterable[int]) -> list[list[int]]:
    """Sorted [first, stop) runs of consecutive indices."""
    values = np.sort(indices if isinstance(indices, np.ndarray) else np.fromiter(indices, dtype=np.int64))
    if values.size == 0:
        return []
    values = values[np.concatenate(([True], np.diff(values) != 0))]  # (np.unique hashes: slower)
    breaks = np.flatnonzero(np.diff(values) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [values.size]))
    return [[int(values[a]), int(values[b - 1]) + 1] for a, b in zip(starts, stops)]


def merge_ranges(ranges: Iterable[Sequence[int]]) -> list[list[int]]:
    """[first, stop) runs sorted, overlapping and touching ones joined."""
    out: list[list[int]] = []
    for a, b in sorted((int(a), int(b)) for a, b in ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        elif a < b:
            out.append([a, b])
    return out


def subtract(ranges: list[list[int]], points: Iterable[int]) -> list[list[int]]:
    """Merged `ranges` without the indices in `points`."""
    drop = sorted(set(int(p) for p in points))
    if not drop:
        return ranges
    out = []
    for a, b in ranges:
        for p in drop[bisect.bisect_left(drop, a):bisect.bisect_left(drop, b)]:
            if a < p:
                out.append([a, p])
            a = p + 1
        if a < b:
            out.append([a, b])
    return out


def _write_atomic(path: str, record: dict) -> None:
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(record, f, default=_json_default, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_roots(record: dict, work_dir: str) -> dict[str, str]:
    """The roots a marker file stores (`DoneMarkers.stored_roots`), in full: relative ones from `work_dir`."""
    roots = record.get("roots", {})
    if record.get("relative_roots"):
        base = os.path.abspath(work_dir)
        roots = {name: os.path.join(base, root) for name, root in roots.items()}
    return {**roots, **record.get("absolute_roots", {})}


class MarkerState:
    """What the marker files of a stage say: finished ranges, summaries, chunk records."""

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []
        self.summaries: dict[int, dict] = {}
        self.chunks: dict[int, dict] = {}
        self.roots: dict[str, str] = {}

    def add(self, record: dict, work_dir: str = "") -> None:
        """Fold in one marker file; its relative roots are taken from `work_dir` (where the file is now)."""
        self.ranges.extend(record.get("ranges", ()))
        self.summaries.update({int(k): v for k, v in record.get("summaries", {}).items()})
        self.chunks.update({int(k): v for k, v in record.get("chunks", {}).items()})
        self.roots.update(read_roots(record, work_dir))

    def merged(self) -> list[list[int]]:
        return merge_ranges(self.ranges)

    def count(self) -> int:
        return sum(b - a for a, b in self.merged())

    def mask(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=bool)
        for a, b in self.merged():
            out[max(a, 0):min(b, n)] = True
        return out

    def indices(self) -> np.ndarray:
        merged = self.merged()
        if not merged:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in merged])


def changed_params(before: dict, now: dict, most: int = 3, cut: int | None = 30) -> str:
    """`name before -> now` for the parameters that differ (at most `most`, values cut to `cut` characters)."""
    def short(value) -> str:
        text = json.dumps(value) if value is not None else "unset"
        return text if cut is None or len(text) <= cut else text[:cut - 3] + "..."

    names = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    listed = [f"{k} {short(before.get(k))} -> {short(now.get(k))}" for k in names[:most]]
    return ", ".join(listed) + (f", and {len(names) - most} more" if len(names) > most else "")


class DoneMarkers:
    normalised = staticmethod(_normalised)

    def __init__(self, work_dir: str, stage: str):
        self.stage = stage
        self.work_dir = work_dir
        self.directory = os.path.join(work_dir, ".connectome", "done", stage)

    @property
    def base(self) -> str:
        return os.path.abspath(self.work_dir)

    def relative(self, fingerprint: dict) -> dict:
        """`fingerprint` normalised, with its paths inside the work directory relative to it (`relative_paths`):
        the form that is compared and stored."""
        return relative_paths(_normalised(fingerprint), self.base)

    def resumes(self, fingerprint: dict, legacy: dict | None = None) -> bool:
        """Whether this stage's finished blocks belong to a run of `fingerprint` (module function `resumes`, both
        sides in relative form), or of `legacy`: the same run's fingerprint as an earlier version built it (a
        global step's, naming its tables' producer by the hash of paths in full)."""
        return self._resumes(self.fingerprint(), fingerprint, legacy)

    def _resumes(self, existing: dict | None, fingerprint: dict, legacy: dict | None) -> bool:
        if existing is None:
            return False
        existing = relative_paths(existing, self.base)
        return any(resumes(existing, self.relative(f)) for f in (fingerprint, legacy) if f is not None)

    def same(self, fingerprint: dict, legacy: dict | None = None) -> bool:
        """Whether the stored fingerprint is `fingerprint` (or `legacy`, see `resumes`) exactly, in relative form."""
        existing = self.fingerprint()
        if existing is None:
            return False
        existing = relative_paths(existing, self.base)
        return any(existing == self.relative(f) for f in (fingerprint, legacy) if f is not None)

    # -- fingerprint -------------------------------------------------------------------------

    def fingerprint(self) -> dict | None:
        path = os.path.join(self.directory, FINGERPRINT)
        try:
            with open(path) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise UserError(f"{path}: is a folder, expected the stage's fingerprint (a JSON file)") from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            what = "empty" if not text.strip() else "not a JSON object"
            raise UserError(f"{path}: {what}, expected the fingerprint of stage {self.stage!r}; "
                            "pass --overwrite to start the stage again")
        return value

    def left_out(self) -> dict:
        """The parameters the stored fingerprint leaves out (at a default, so that runs from before them resume), as
        they were asked (`claim`'s `left_out`); {} where none were stored (none left out, or a run made before
        2026-12-06)."""
        try:
            with open(os.path.join(self.directory, LEFT_OUT)) as f:
                value = json.load(f)
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def check(self, fingerprint: dict, overwrite: bool = False, legacy: dict | None = None,
              left_out: dict | None = None) -> None:
        """Refuse to resume finished blocks that were computed with a different fingerprint (`resumes`). The one
        line names each changed parameter as asked on both sides: one that a fingerprint leaves out at its default
        (`left_out`: this run's, as asked; the stored run's from `LEFT_OUT`) by its value (`tta 4 -> 1`), not as
        unset; "unset" is left for a parameter that was not given."""
        if overwrite:
            return
        existing = self.fingerprint()
        if existing is None or self._resumes(existing, fingerprint, legacy):
            return
        before, wanted = relative_paths(existing, self.base), self.relative(fingerprint)
        given = _normalised(fingerprint)
        asked = {"params": (_normalised(left_out or {}), self.left_out())}  # part -> (now, stored) left out
        changed = sorted(k for k in set(before) | set(wanted) if before.get(k) != wanted.get(k))
        # what changed within each part: parameter values (cut short), and the addresses in full (a path inside the
        # output directory is compared relative to it, so a moved output resumes; one outside it, such as the raw
        # input, is compared in full: the same data under another path is a change)
        said = []
        for k in changed:
            old, new = before.get(k), wanted.get(k)
            if not (isinstance(old, dict) and isinstance(new, dict)):
                said.append(k)
                continue
            names = [n for n in set(old) | set(new) if old.get(n) != new.get(n)]
            given_k = given.get(k)
            shown_new: dict = given_k if isinstance(given_k, dict) else new
            now_left, stored_left = asked.get(k, ({}, {}))
            shown_new, shown_old = {**now_left, **shown_new}, {**stored_left, **old}
            a = {n: _shown(old[n], shown_new.get(n), self.base) if k in ADDRESSES else shown_old[n]
                 for n in names if n in shown_old}
            b = {n: shown_new[n] for n in names if n in shown_new}
            said.append(f"{k} ({changed_params(a, b, cut=30 if k == 'params' else None)})")
        moved = [n for k in changed if k in ADDRESSES and isinstance(before.get(k), dict)
                 and isinstance(wanted.get(k), dict) for n, v in before[k].items()
                 if isinstance(v, str) and os.path.isabs(v) and isinstance(wanted[k].get(n), str)
                 and not os.path.isabs(wanted[k][n]) and v.endswith(os.sep + wanted[k][n])]
        hint = (" (a run of connectome before 2026-12 recorded the output's paths in full: run it once where it "
                "was made, then it can be moved)") if moved else ""
        raise UserError(
            f"stage {self.stage!r} in {self.work_dir} was started with other settings: {', '.join(said)}{hint}; "
            "pass --overwrite to discard its finished blocks and start again"
        )

    def claim(self, fingerprint: dict, overwrite: bool = False, legacy: dict | None = None,
              left_out: dict | None = None) -> bool:
        """Bind this directory to `fingerprint` (stored in relative form, `relative`); True when old markers were
        discarded (`overwrite`). A stored `legacy` fingerprint (`resumes`) is kept and rewritten as `fingerprint`.
        `left_out`: the parameters the fingerprint leaves out, as asked (stored beside it, `LEFT_OUT`, for a later
        refusal to name them: `check`); None leaves what is stored."""
        self.check(fingerprint, overwrite, legacy, left_out)
        try:
            existing = self.fingerprint()
        except UserError:  # unreadable: only reached with overwrite
            existing = {"unreadable": True}
        discarded = existing is not None and not self._resumes(existing, fingerprint, legacy)
        if discarded:
            self.clear()
        os.makedirs(self.directory, exist_ok=True)
        self._remove_litter()
        _write_atomic(os.path.join(self.directory, FINGERPRINT), self.relative(fingerprint))
        if left_out:
            _write_atomic(os.path.join(self.directory, LEFT_OUT), self.relative(left_out))
        elif left_out is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, LEFT_OUT))
        return discarded

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def stored_roots(self, roots: dict[str, str]) -> dict:
        """`roots` as a marker file stores them: those inside the work directory relative to it, the others (an
        input read from outside it, an output written outside it) in full under `absolute_roots`."""
        base = os.path.abspath(self.work_dir)
        relative, absolute = {}, {}
        for name, root in roots.items():
            path = os.path.abspath(root)
            if "://" in root or not path.startswith(base + os.sep):
                absolute[name] = root
            else:
                relative[name] = os.path.relpath(path, base)
        if not relative:
            return {"roots": roots}
        return {"roots": relative, "relative_roots": True, **({"absolute_roots": absolute} if absolute else {})}

    def _remove_litter(self) -> None:
        """Temporary files of writes that were killed (only the one run holding the output lock calls this)."""
        for name in self._names():
            if name.startswith(".") and name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, name))

    # -- reading -----------------------------------------------------------------------------

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.directory)
        except FileNotFoundError:
            return []

    def load(self) -> MarkerState:
        """Everything the marker files say. Task files are read before the super-block files, so a
        compaction running meanwhile cannot hide a block (it writes the super-block file first)."""
        state = MarkerState()
        names = self._names()
        parts = [n for n in names if n.startswith("p-") and n.endswith(".json")]
        supers = [n for n in names if n.startswith("s-") and n.endswith(".json")]
        legacy = [int(n) for n in names if n.isdigit()]  # one file per block (runs before this format)
        for name in parts + supers:
            try:
                with open(os.path.join(self.directory, name)) as f:
                    state.add(json.load(f), self.work_dir)
            except FileNotFoundError:
                continue  # folded into a super-block file meanwhile (read below)
            except json.JSONDecodeError:
                raise UserError(f"{os.path.join(self.directory, name)}: damaged done-marker file; "
                                "delete it (its blocks run again)") from None
        for i in legacy:
            state.ranges.append([i, i + 1])
            with contextlib.suppress(OSError, json.JSONDecodeError):
                with open(os.path.join(self.directory, str(i))) as f:
                    text = f.read()
                if text:
                    state.summaries[i] = json.loads(text)
        return state

    def done(self) -> set[int]:
        return {int(i) for i in self.load().indices()}

    def done_mask(self, n: int) -> np.ndarray:
        """A boolean array over block indices 0..n-1: True where the block is finished."""
        return self.load().mask(n)

    def count(self) -> int:
        return self.load().count()

    def is_done(self, index: int) -> bool:
        return any(a <= index < b for a, b in self.load().ranges)


    def summary(self, index: int) -> dict:
        state = self.load()
        if not any(a <= index < b for a, b in state.ranges):
            raise FileNotFoundError(f"{self.directory}: block {index} has no done-marker")
        return state.summaries.get(index, {})

    def summaries(self) -> dict[int, dict]:
        state = self.load()
        return {int(i): state.summaries.get(int(i), {}) for i in state.indices()}

    # -- writing -----------------------------------------------------------------------------

    def writer(self, task: str) -> MarkerWriter:
        return MarkerWriter(self, task)

    def mark(self, index: int, summary: dict | None = None, chunks: dict | None = None) -> None:
        """Record block `index` as finished, at once (one file); a task's blocks use `writer` instead."""
        w = self.writer(uuid.uuid4().hex[:12])
        w.add(index, summary, chunks)
        w.flush()

    def task_done(self, task: str) -> set[int]:
        """Blocks recorded by earlier attempts of task `task` (a retried task skips them)."""
        state = MarkerState()
        for name in self._names():
            if name.startswith(f"p-{task}-") and name.endswith(".json"):
                with contextlib.suppress(FileNotFoundError, json.JSONDecodeError), \
                        open(os.path.join(self.directory, name)) as f:
                    state.add(json.load(f), self.work_dir)
        return {int(i) for i in state.indices()}

    # -- the client's upkeep (only while it holds the output lock) ---------------------------

    def compact(self, forget: Iterable[int] = ()) -> None:
        """Fold task files (and legacy per-block files) into one file per super-block; drop `forget`."""
        names = self._names()
        folded = [n for n in names if (n.startswith("p-") and n.endswith(".json")) or n.isdigit()]
        forget = {int(i) for i in forget}
        if not folded and not forget and not self._absolute_roots_inside(names):
            return
        state = self.load()
        groups: dict[int, list[list[int]]] = {}  # super-block -> its finished ranges
        for a, b in subtract(state.merged(), forget):
            while a < b:
                k = a // SUPER
                end = min(b, (k + 1) * SUPER)
                groups.setdefault(k, []).append([a, end])
                a = end
        extras: dict[int, tuple[dict, dict]] = {}  # super-block -> (summaries, chunks) of its blocks
        for which, source in ((0, state.summaries), (1, state.chunks)):
            for i, value in source.items():
                if value and i not in forget:
                    extras.setdefault(i // SUPER, ({}, {}))[which][str(i)] = value
        old_supers = {n for n in names if n.startswith("s-") and n.endswith(".json")}
        written = set()
        for k, ranges in sorted(groups.items()):
            summaries, chunks = extras.get(k, ({}, {}))
            record = {"ranges": ranges, "summaries": summaries, "chunks": chunks, **self.stored_roots(state.roots)}
            name = f"s-{int(k)}.json"
            _write_atomic(os.path.join(self.directory, name), record)
            written.add(name)
        for name in folded + sorted(old_supers - written):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, name))
        if any(n.startswith("i-") and n.endswith(".json") for n in names):
            self.drop_inputs({})  # (the input files of the blocks folded above)

    def _absolute_roots_inside(self, names: list[str]) -> bool:
        """Whether the super-block files hold roots in full that lie inside the work directory (written before
        roots were stored relative to it): `compact` then rewrites them relative, so the output can move. (One
        file is read: a compaction writes all of them alike.)"""
        supers = sorted(n for n in names if n.startswith("s-") and n.endswith(".json"))
        if not supers:
            return False
        try:
            with open(os.path.join(self.directory, supers[0])) as f:
                record = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        roots = record.get("roots") if isinstance(record, dict) else None
        if not isinstance(roots, dict) or not roots or record.get("relative_roots"):
            return False
        return "relative_roots" in self.stored_roots(roots)

    def forget(self, indices: Iterable[int]) -> None:
        """Unmark blocks (their output is gone): the next run computes them again."""
        self.compact(forget=indices)

    def lost_blocks(self, checksum_all: bool = False, state: MarkerState | None = None) -> dict[int, str]:
        """Finished blocks whose recorded output chunks changed on disk: index -> the first such file (from
        `state`, as `load()` gave it, where the caller has it).

        A chunk's size and mtime are compared (one stat); a chunk whose mtime alone changed (copied,
        touched) is read and its crc32 compared. `checksum_all` reads every chunk.
        """
        state = state if state is not None else self.load()
        lost: dict[int, str] = {}
        for index, outputs in state.chunks.items():
            for name, records in outputs.items():
                root = state.roots.get(name)
                if root is None:
                    continue
                folder = root + os.sep
                for key, size, mtime, crc in records:
                    path = folder + key
                    if not _chunk_matches(path, size, mtime, crc, checksum_all):
                        lost[index] = path
                        break
                if index in lost:
                    break
        return lost

    # -- input files -------------------------------------------------------------------------

    def input_tables(self) -> dict[int, dict[str, dict[str, list]]]:
        """super-block -> input -> file key -> [size, mtime_ns]: what the finished blocks read of the inputs they
        record (the `inputs-<k>.json` files and the task files `i-*.json` not folded yet)."""
        return self._input_tables()[0]

    def _input_tables(self) -> tuple[dict[int, dict[str, dict[str, list]]], list[str], dict[str, str]]:
        """(`input_tables`, the task files read: only those may be folded away, not one written meanwhile, and the
        inputs' roots, which the tables store themselves: the blocks' marker files may all be forgotten)."""
        roots: dict[str, str] = {}
        tables: dict[int, dict[str, dict[str, list]]] = {}
        names = self._names()
        tasks = [n for n in names if n.startswith("i-") and n.endswith(".json")]
        read = []
        for name in tasks + sorted(n for n in names if n.startswith("inputs-") and n.endswith(".json")):
            path = os.path.join(self.directory, name)
            try:
                with open(path) as f:
                    record = json.load(f)
            except FileNotFoundError:
                continue  # folded meanwhile
            except json.JSONDecodeError:
                raise UserError(f"{path}: damaged record of the input files blocks read; pass --overwrite to start "
                                "the stage again (deleting it leaves changes to those files unnoticed)") from None
            read.append(name)
            roots.update(read_roots(record, self.work_dir))
            for k, inputs in record.get("tables", {}).items():
                table = tables.setdefault(int(k), {})
                for input_name, files in inputs.items():
                    merge_input_files(table.setdefault(input_name, {}), files)
        return tables, [n for n in read if n in tasks], roots

    def changed_inputs(self) -> dict[int, dict[str, dict[str, str]]]:
        """super-block -> input -> file key -> path of each recorded input file that is not as recorded now (or
        was read in two versions, `CHANGED`); one stat per file."""
        tables, _, roots = self._input_tables()
        if not tables:
            return {}
        now: dict[str, list] = {}  # path -> its record now (a file is listed by every super-block near it)
        changed: dict[int, dict[str, dict[str, str]]] = {}
        for k, table in tables.items():
            for name, files in table.items():
                root = roots.get(name)
                for key, record in files.items():
                    path = os.path.join(root, key) if root else key
                    if root is None:  # (no root recorded: compared, it differs)
                        changed.setdefault(k, {}).setdefault(name, {})[key] = path
                        continue
                    if path not in now:
                        now[path] = input_record(path)
                    if list(record) == CHANGED or now[path] != list(record):
                        changed.setdefault(k, {}).setdefault(name, {})[key] = path
        return changed

    def drop_inputs(self, keys: dict[int, dict[str, Iterable[str]]]) -> None:
        """Fold the input task files into one `inputs-<k>.json` per super-block, leaving out `keys` (super-block
        -> input -> file keys: changed files whose readers were all forgotten; they record them anew)."""
        tables, folded, roots = self._input_tables()
        for k, table in tables.items():
            drop = keys.get(k, {})
            kept = {name: {key: r for key, r in files.items() if key not in set(drop.get(name, ()))}
                    for name, files in table.items()}
            kept = {n: f for n, f in kept.items() if f}
            record = {"tables": {str(k): kept}, **self.stored_roots({n: roots[n] for n in kept if n in roots})}
            _write_atomic(os.path.join(self.directory, f"inputs-{k}.json"), record)
        for name in folded:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, name))


CHANGED = [-2, 0]  # an input file recorded with two different sizes or times: compared, it always differs


def merge_input_files(into: dict[str, list], files: dict[str, list]) -> None:
    """Add input file records `files` (key -> [size, mtime_ns]) to `into`; a key known with other values is marked
    `CHANGED` (blocks read two versions of it)."""
    for key, record in files.items():
        known = into.get(key)
        into[key] = list(record) if known is None or list(known) == list(record) else list(CHANGED)


def input_record(path: str) -> list:
    """[size, mtime_ns] of an input file; where it does not exist, of the one with a compression suffix (a
    precomputed chunk written since), else [-1, 0]."""
    for candidate in (path, *(path + suffix for suffix in COMPRESSED)):
        try:
            st = os.stat(candidate)
        except FileNotFoundError:
            continue
        return [st.st_size, st.st_mtime_ns]
    return [-1, 0]


def _chunk_matches(path: str, size: int, mtime: int, crc: int, checksum: bool) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return size == -1
    if size == -1 or st.st_size != size:
        return False
    if st.st_mtime_ns == mtime and not checksum:
        return True
    return _crc(path) == crc


def _crc(path: str) -> int:
    with open(path, "rb") as f:
        return zlib.crc32(f.read())


def chunk_record(path: str) -> list:
    """[key placeholder filled by the caller] size, mtime_ns and crc32 of one stored chunk (-1: absent)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [-1, 0, 0]
    return [st.st_size, st.st_mtime_ns, _crc(path)]


class MarkerWriter:
    """A task's markers: blocks are added as they finish and written out every `FLUSH_SECONDS`."""

    def __init__(self, markers: DoneMarkers, task: str):
        self.markers = markers
        self.task = task
        self.prefix = f"{task}-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # a retry in the same process gets its own
        self.sequence = 0
        self.indices: list[int] = []
        self.summaries: dict[str, dict] = {}
        self.chunks: dict[str, dict] = {}
        self.roots: dict[str, str] = {}
        self.inputs: dict[int, dict[str, dict[str, list]]] = {}  # super-block -> input -> file key -> record
        self.input_roots: dict[str, str] = {}
        self.last_flush = time.monotonic()

    def add(self, index: int, summary: dict | None = None, chunks: dict | None = None,
            roots: dict[str, str] | None = None, inputs: dict[str, dict[str, list]] | None = None,
            input_roots: dict[str, str] | None = None) -> None:
        """Block `index` finished: its summary, the chunks it wrote, their roots, and the input files it read
        (input -> key -> [size, mtime_ns]) with theirs (input -> directory)."""
        self.indices.append(int(index))
        if summary:
            self.summaries[str(index)] = summary
        if chunks:
            self.chunks[str(index)] = chunks
        if roots:
            self.roots.update(roots)
        for name, files in (inputs or {}).items():
            merge_input_files(self.inputs.setdefault(int(index) // SUPER, {}).setdefault(name, {}), files)
        self.input_roots.update(input_roots or {})
        if time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.indices:
            return
        ranges = ranges_of(self.indices)
        if self.inputs:  # (before the blocks' own file: a block marked done always has its input files recorded)
            _write_atomic(os.path.join(self.markers.directory, f"i-{self.prefix}-{self.sequence}.json"),
                          {"tables": {str(k): table for k, table in self.inputs.items()},
                           **self.markers.stored_roots(self.input_roots)})
        record = {"ranges": ranges, "summaries": self.summaries, "chunks": self.chunks,
                  **self.markers.stored_roots(self.roots)}
        name = f"p-{self.prefix}-{self.sequence}.json"
        _write_atomic(os.path.join(self.markers.directory, name), record)
        self.sequence += 1
        self.indices, self.summaries, self.chunks, self.inputs, self.input_roots = [], {}, {}, {}, {}
