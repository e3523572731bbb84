"""What a command says on stderr while it checks its input (a warning that the sections look out of order, that a
model was trained on 2-D labels, a voxel size taken from metadata, an input's missing chunks), held until every check
has passed: a refused run prints its one error line and nothing before it (`connectome segment` printed the
section-order warning, then refused the model's voxel size)."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator

from connectome.core.errors import UserError


@contextlib.contextmanager
def held_until_accepted() -> Iterator[None]:
    """Hold what is written to stderr in the block: said once the block ends without a refusal, dropped with a
    refusal (UserError, whose one line says what is wrong), said before any other error or an interrupt."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    except UserError:
        raise
    except BaseException:
        _say(held.getvalue())
        raise
    _say(held.getvalue())


def _say(text: str) -> None:
    if text:
        sys.stderr.write(text)
        sys.stderr.flush()
