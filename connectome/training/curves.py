"""The loss-curve figure of a training run: training loss and validation VOI against iteration."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def loss_ends(losses: Sequence[float], window: int) -> tuple[float | None, float | None]:
    """The mean of the first and of the last `window` losses, each at most half of them (so that a short run's
    two figures are not the same mean); None without losses."""
    if not len(losses):
        return None, None
    n = max(1, min(window, len(losses) // 2))
    return float(np.mean(losses[:n])), float(np.mean(losses[-n:]))


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Running mean over `window` iterations (shorter at the start)."""
    v = np.asarray(values, np.float64)
    if len(v) == 0 or window <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_curves(path: str | Path, losses: Sequence[float], validation: Sequence[dict], title: str,
                loss_label: str = "weighted BCE loss") -> Path:
    """Write a PNG: per-iteration loss (faint), its running mean, and validation VOI split/merge/total."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    it = np.arange(1, len(losses) + 1)
    ax.plot(it, losses, color="tab:blue", alpha=0.25, lw=0.6, label="loss")
    ax.plot(it, smooth(losses, max(1, len(losses) // 50)), color="tab:blue", lw=1.5, label="loss (running mean)")
    ax.set_xlabel("iteration")
    ax.set_ylabel(loss_label)
    ax.set_yscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if validation:
        ax2 = ax.twinx()
        vi = [v["iteration"] for v in validation]
        for key, colour in (("voi", "black"), ("voi_split", "tab:orange"), ("voi_merge", "tab:green")):
            ax2.plot(vi, [v[key] for v in validation], "o-", color=colour, ms=3, lw=1, label=f"validation {key}")
        ax2.set_ylabel("VOI (bits)")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
