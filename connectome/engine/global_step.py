"""Global steps: work that runs once over all blocks' results (e.g. the global merge into a lookup
table), with its own fingerprint and done-marker like a stage of one block, run on a worker.

A block stage that needs one returns it from `global_step()`; the plan runs it right before the
stage's blocks. A step re-runs when the tables it reads were rewritten in the same run, and is
refused (unless --overwrite) when its parameters or its inputs' producer changed since it ran.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar


class GlobalStep(ABC):
    """One task over every block's results; `run` executes on a worker and returns a small summary."""

    name: ClassVar[str]

    @abstractmethod
    def run(self) -> dict:
        """Compute and store the result (atomically); return a JSON-able summary."""

    @abstractmethod
    def fingerprint(self) -> dict:
        """What the stored result depends on: parameters, inputs and the version of its inputs' producer."""
