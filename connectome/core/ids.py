"""Global ids without a central counter (design principle 6): block-local label l of block b is
`(b << 32) | l` (uint64); 0 stays 0 (background)."""

from __future__ import annotations

import numpy as np

LOCAL_BITS = 32


def globalise(local: np.ndarray, block_index: int) -> np.ndarray:
    """Local ids 1..n of block `block_index` as unique uint64 ids; 0 stays 0."""
    out = local.astype(np.uint64, copy=True)
    out[out != 0] |= np.uint64(block_index) << np.uint64(LOCAL_BITS)
    return out
