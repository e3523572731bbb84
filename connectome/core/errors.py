"""Exceptions that the command line turns into one-line messages."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: printed as one line on stderr, exit code 2, no traceback."""


class StageFailed(RuntimeError):
    """A stage stopped after bounded retries; names the stage, the block and the first traceback."""

    def __init__(self, stage: str, block_index: int, write_box: str, traceback_text: str):
        super().__init__(stage, block_index, write_box, traceback_text)
        self.stage = stage
        self.block_index = block_index
        self.write_box = write_box
        self.traceback_text = traceback_text
        self.log_file: str | None = None  # where the traceback was written, when it was

    def __str__(self) -> str:
        last = self.traceback_text.strip().splitlines()[-1] if self.traceback_text.strip() else ""
        return f"stage {self.stage!r} failed in block {self.block_index} (write box {self.write_box}): {last}"


def unwritable(error: OSError, where: str) -> UserError:
    """A one-line UserError for an output that cannot be written (read-only, full, no permission)."""
    path = error.filename or where
    return UserError(f"{path}: cannot write the output here ({error.strerror or error})")
