"""The strain term of the global solve (`align` params `strain`): each section's scale and shear are held, its
rotation and shift are not; in the mesh (`mesh._StrainTerm`) and in the affine solve (`solve._strain_matrix`)."""

from __future__ import annotations

import numpy as np

from connectome.alignment.mesh import MeshSystem, Springs
from connectome.alignment.solve import _basis, solve_affine

NODES = (np.arange(0, 300, 50.0), np.arange(0, 400, 50.0))


def _fields(kind: str, sections: int = 4) -> np.ndarray:
    gy, gx = np.meshgrid(*NODES, indexing="ij")
    y, x = gy - gy.mean(), gx - gx.mean()
    one = {"rotation": np.stack([-x, y], -1), "scale": np.stack([y, x], -1), "shear": np.stack([x, y], -1),
           "shift": np.stack([np.ones_like(y), -np.ones_like(x)], -1) * 50}[kind] * 0.01
    return np.repeat(one[None], sections, 0)


def test_the_mesh_term_is_symmetric_with_its_diagonal_and_costs_only_scale_and_shear():
    phi = _basis(NODES)
    rng = np.random.default_rng(0)
    shape = (4, len(NODES[0]), len(NODES[1]), 2)
    weights, targets = {1: rng.random(shape[:3])[:3]}, {1: rng.normal(size=(3,) + shape[1:])}
    system = MeshSystem(weights, targets, np.zeros(shape), Springs(strain=0.5), phi)
    n = int(np.prod(shape))
    h = np.stack([system.apply(e.reshape(shape)).ravel() for e in np.eye(n)], axis=1)
    np.testing.assert_allclose(h, h.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(h), system.diagonal().ravel(), atol=1e-12)
    assert np.linalg.eigvalsh(h).min() > 0
    cost = {kind: float(np.vdot(_fields(kind), system.strain.apply(_fields(kind))))
            for kind in ("rotation", "shift", "scale", "shear")}
    assert abs(cost["rotation"]) < 1e-20 and abs(cost["shift"]) < 1e-20, cost
    assert cost["scale"] > 100 and cost["shear"] > 100, cost


def test_the_affine_solve_holds_a_scale_the_pairs_add_up_but_follows_their_rotation():
    """Every pair measures the next section 1 % larger and turned by 0.01 rad: followed, the last of 8 sections is
    7 % larger; held, it keeps its scale and still turns."""
    phi = _basis(NODES)
    step = _fields("scale", 1)[0] + _fields("rotation", 1)[0]  # 1 % scale and 0.01 rad per pair, scaled coordinates
    f = phi.reshape(-1, 3)
    target = np.repeat(np.linalg.lstsq(f, step.reshape(-1, 2), rcond=None)[0][None], 7, 0)
    targets = {1: np.einsum("yxi,zic->zyxc", phi, target)}
    weights = {1: np.ones((7, len(NODES[0]), len(NODES[1])))}
    nodes, per = f.shape[0], target[0]  # per pair: e_yy = per[1, 0], the rotation per[1, 1]
    followed = solve_affine(phi, targets, weights, 8, 1e-6 * nodes, 1e-3 * nodes, 0.0)
    held = solve_affine(phi, targets, weights, 8, 1e-6 * nodes, 1e-3 * nodes, 1.0 * nodes)
    assert abs((followed[-1, 1, 0] - followed[0, 1, 0]) / (7 * per[1, 0]) - 1) < 0.05  # (the weak linear anchor: 2.5 %)
    assert abs(held[-1, 1, 0] - held[0, 1, 0]) < 0.1 * 7 * per[1, 0]
    for a in (followed, held):
        assert a[-1, 1, 1] - a[0, 1, 1] > 0.9 * 7 * per[1, 1]
