"""Whether a model may run on data of a given voxel size: within a factor of 1.5 on every axis."""

from __future__ import annotations

from collections.abc import Sequence

from connectome.core.errors import UserError

VOXEL_TOLERANCE = 1.5


def within_tolerance(data_nm: Sequence[float], model_nm: Sequence[float]) -> bool:
    """Whether every axis of `data_nm` lies within `VOXEL_TOLERANCE` of `model_nm`'s."""
    return all(1 / VOXEL_TOLERANCE <= d / m <= VOXEL_TOLERANCE for d, m in zip(data_nm, model_nm))


def check_voxel_size(model: str, model_nm: Sequence[float], address: str, data_nm: Sequence[float],
                     allow_mismatch: bool = False,
                     hint: str = "choose a model of that voxel size or pass --allow-voxel-mismatch") -> None:
    """Refuse, in one line, data whose voxel size is beyond the tolerance of the model's (unless allowed)."""
    if allow_mismatch:
        return
    if not within_tolerance(data_nm, model_nm):
        raise UserError(f"model {model}: trained on {list(model_nm)} nm voxels, but {address} has {list(data_nm)} nm; "
                        + hint)
