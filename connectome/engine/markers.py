"""Done-markers: one file per finished block, holding that block's small summary (JSON).

A stage's markers live in `<work_dir>/.connectome/done/<stage>/`, next to a `fingerprint.json`
that records the block layout and the stage parameters. A re-run skips blocks whose marker
exists; a changed fingerprint is refused unless the caller asks to overwrite.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from connectome.core.errors import UserError

FINGERPRINT = "fingerprint.json"


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a block summary")


def _normalised(fingerprint: dict) -> dict:
    return json.loads(json.dumps(fingerprint, default=_json_default, sort_keys=True))


class DoneMarkers:
    normalised = staticmethod(_normalised)

    def __init__(self, work_dir: str, stage: str):
        self.stage = stage
        self.directory = os.path.join(work_dir, ".connectome", "done", stage)

    def _path(self, index: int) -> str:
        return os.path.join(self.directory, str(index))

    def fingerprint(self) -> dict | None:
        try:
            with open(os.path.join(self.directory, FINGERPRINT)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def check(self, fingerprint: dict, overwrite: bool = False) -> None:
        """Refuse to resume finished blocks that were computed with a different fingerprint."""
        existing = self.fingerprint()
        fingerprint = _normalised(fingerprint)
        if existing is None or existing == fingerprint or overwrite:
            return
        changed = sorted(k for k in set(existing) | set(fingerprint) if existing.get(k) != fingerprint.get(k))
        work_dir = os.path.dirname(os.path.dirname(os.path.dirname(self.directory)))
        raise UserError(
            f"stage {self.stage!r} in {work_dir} was started with a different {', '.join(changed)}; "
            "pass --overwrite to discard its finished blocks and start again"
        )

    def claim(self, fingerprint: dict, overwrite: bool = False) -> bool:
        """Bind this directory to `fingerprint`; True when old markers were discarded (`overwrite`)."""
        self.check(fingerprint, overwrite)
        fingerprint = _normalised(fingerprint)
        discarded = self.fingerprint() not in (None, fingerprint)
        if discarded:
            self.clear()
        os.makedirs(self.directory, exist_ok=True)
        tmp = os.path.join(self.directory, FINGERPRINT + ".tmp")
        with open(tmp, "w") as f:
            json.dump(fingerprint, f, indent=1, sort_keys=True)
        os.replace(tmp, os.path.join(self.directory, FINGERPRINT))
        return discarded

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def done(self) -> set[int]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return set()
        return {int(n) for n in names if n.isdigit()}

    def is_done(self, index: int) -> bool:
        return os.path.exists(self._path(index))

    def mark(self, index: int, summary: dict | None = None) -> None:
        """Record block `index` as finished; the marker appears atomically, summary included."""
        path = self._path(index)
        if not summary:
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))  # an empty marker: no file object
            return
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(summary, f, default=_json_default)
        os.replace(tmp, path)

    def summary(self, index: int) -> dict:
        with open(self._path(index)) as f:
            text = f.read()
        return json.loads(text) if text else {}

    def summaries(self) -> dict[int, dict]:
        return {i: self.summary(i) for i in sorted(self.done())}
