"""Stage parameters: guards (parameters that only decide whether a run may start) must be fields."""

import pytest

from connectome.engine.stage import StageParams


def test_a_guard_is_one_of_the_fields():
    class Guarded(StageParams):
        allow_voxel_mismatch: bool = False
        guards = ("allow_voxel_mismatch",)

    assert Guarded().guards == ("allow_voxel_mismatch",)
    with pytest.raises(TypeError, match=r"Misspelt.guards names \['allow_voxel_mismatc'\]"):
        class Misspelt(StageParams):
            allow_voxel_mismatch: bool = False
            guards = ("allow_voxel_mismatc",)
