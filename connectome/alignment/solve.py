"""The global solve over all sections: measured displacements between neighbouring sections ->
one displacement field per section, so that errors do not accumulate along the stack.

First an affine transform per section from a sparse least-squares system (3 unknowns per section
and component, banded: memory linear in the number of sections), then the elastic mesh relaxed from
it (`mesh.relax`). Displacements are measured at raw positions, so the system is re-linearised a few
times at the current solution (a fixed-point iteration that converges in two or three rounds).
The frame of the result: the median section's affine part is identity (`frame`), so sections that the
data leave where they are (pairs held as registered: `solve_step.registered_pairs`) stay where they were,
and a few moved sections do not shift the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from connectome.alignment.mesh import STRAIN_FORM, MeshSystem, Springs, interpolate, relax


@dataclass
class Measured:
    """Displacements d[k] (sections - k, gy, gx, 2) from section z to z + k, weights w[k] (0 = unused)."""

    nodes: tuple[np.ndarray, np.ndarray]
    d: dict[int, np.ndarray]
    w: dict[int, np.ndarray]
    sections: int


def _basis(nodes: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(gy, gx, 3): 1, y, x at the nodes, coordinates scaled to about [-1, 1]."""
    ys, xs = nodes
    cy, cx = ys.mean(), xs.mean()
    scale = max(float(np.ptp(ys)), float(np.ptp(xs)), 1.0) / 2
    y, x = np.meshgrid((ys - cy) / scale, (xs - cx) / scale, indexing="ij")
    return np.stack([np.ones_like(y), y, x], axis=-1)


def solve_affine(phi: np.ndarray, targets: dict[int, np.ndarray], weights: dict[int, np.ndarray], sections: int,
                 z_smooth: float, linear_anchor: float, strain: float = 0.0) -> np.ndarray:
    """Per-section affine parameters a (sections, 3, 2) with phi . (a[z+k] - a[z]) ~ targets[k], the
    linear parts weakly held at zero (`linear_anchor`), their strain (scale and shear, not rotation)
    held at zero by `strain`, and the median section's parameters zero."""
    n = sections
    f = phi.reshape(-1, 3)
    rows, cols, vals = [], [], []
    b = np.zeros((n, 3, 2))

    def add(zi: np.ndarray, zj: np.ndarray, blocks: np.ndarray) -> None:
        ii = (zi[:, None, None] * 3 + np.arange(3)[None, :, None]) * np.ones((1, 1, 3), int)
        jj = (zj[:, None, None] * 3 + np.arange(3)[None, None, :]) * np.ones((1, 3, 1), int)
        rows.append(ii.ravel())
        cols.append(jj.ravel())
        vals.append(blocks.ravel())

    for k, w in weights.items():
        wf = w.reshape(len(w), -1)
        g = np.einsum("zn,ni,nj->zij", wf, f, f)  # (sections - k, 3, 3)
        h = np.einsum("zn,ni,znc->zic", wf, f, targets[k].reshape(len(w), -1, 2))
        z0 = np.arange(n - k)
        add(z0, z0, g)
        add(z0 + k, z0 + k, g)
        add(z0, z0 + k, -g)
        add(z0 + k, z0, -g)
        b[:-k] -= h
        b[k:] += h
    if n >= 3:  # z smoothness: a[z-1] - 2 a[z] + a[z+1] ~ 0 (interpolates sections without measurements)
        eye = np.broadcast_to(np.eye(3) * z_smooth, (n - 2, 3, 3))
        z0 = np.arange(n - 2)
        for i, ci in enumerate((1.0, -2.0, 1.0)):
            for j, cj in enumerate((1.0, -2.0, 1.0)):
                add(z0 + i, z0 + j, eye * ci * cj)
    h_mat = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(3 * n, 3 * n)).tocsc()
    diag = np.tile([1e-9 * z_smooth, linear_anchor, linear_anchor], n)
    h_mat = h_mat + sp.diags(diag, format="csc")
    # both components at once (unknown 2 * (3 z + i) + c): the strain couples them
    h_mat = (sp.kron(h_mat, sp.eye(2)) + _strain_matrix(n, strain)).tocsc()
    # the common translation is free: pin section 0's, centre afterwards
    pin = np.zeros(6 * n, bool)
    pin[:2] = True
    keep = ~pin
    flat = np.zeros(6 * n)
    flat[keep] = spsolve(h_mat[keep][:, keep].tocsc(), b.reshape(-1)[keep])
    a = flat.reshape(n, 3, 2)
    return a - np.median(a, axis=0)


def _strain_matrix(n: int, weight: float) -> sp.csc_matrix:
    """weight * `mesh.STRAIN_FORM` per section over the unknowns 2 * (3 z + i) + c."""
    return sp.kron(sp.eye(n), sp.csc_matrix(STRAIN_FORM * weight)).tocsc()


def frame(u: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """The fields u (sections, gy, gx, 2) less the affine field whose parameters are the median over the
    sections of each section's affine part: the median section's affine part becomes identity."""
    f = phi.reshape(-1, 3)
    params, *_ = np.linalg.lstsq(f, u.reshape(len(u), -1, 2).transpose(1, 0, 2).reshape(len(f), -1), rcond=None)
    params = params.reshape(3, len(u), 2)
    return u - np.einsum("yxi,ic->yxc", phi, np.median(params, axis=1))[None]


def _targets_at(measured: Measured, u: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Measured displacements and weights interpolated at the raw positions x + u_z(x) of the nodes."""
    ys, xs = measured.nodes
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    targets, weights = {}, {}
    for k, d in measured.d.items():
        qy = gy[None] + u[:-k, ..., 0]
        qx = gx[None] + u[:-k, ..., 1]
        t = np.empty_like(d)
        w = np.empty(d.shape[:3])
        for z in range(len(d)):
            stacked = np.concatenate([d[z], measured.w[k][z][..., None]], axis=-1)
            v = interpolate(stacked, measured.nodes, qy[z], qx[z])
            t[z] = v[..., :2]
            w[z] = np.clip(v[..., 2], 0.0, 1.0)
        targets[k], weights[k] = t, w
    return targets, weights


def solve_fields(measured: Measured, springs: Springs = Springs(), rounds: int = 3,
                 iterations: int = 1000) -> tuple[np.ndarray, dict]:
    """Displacement fields u (sections, gy, gx, 2) and a summary of the fit."""
    shape = (measured.sections, len(measured.nodes[0]), len(measured.nodes[1]), 2)
    phi = _basis(measured.nodes)
    nodes_per_section = shape[1] * shape[2]
    u = np.zeros(shape)
    total_iterations = 0
    for _ in range(rounds):
        targets, weights = _targets_at(measured, u)
        a = solve_affine(phi, targets, weights, measured.sections, springs.z_smooth * nodes_per_section,
                         springs.affine_anchor * nodes_per_section, springs.strain * nodes_per_section)
        affine = np.einsum("yxi,zic->zyxc", phi, a)
        system = MeshSystem(weights, targets, affine, springs, phi)
        start = u if total_iterations else affine
        u, its = relax(system, start, iterations)
        u = frame(u, phi)  # the median section's affine part is identity
        total_iterations += its
    targets, weights = _targets_at(measured, u)
    residuals = []
    for k, t in targets.items():
        r = np.linalg.norm(u[k:] - u[:-k] - t, axis=-1)[weights[k] > 0]
        residuals.append(r)
    r = np.concatenate(residuals) if residuals else np.zeros(0)
    summary = {
        "cg_iterations": total_iterations,
        "match_residual_median_px": float(np.median(r)) if r.size else 0.0,
        "match_residual_max_px": float(r.max()) if r.size else 0.0,
    }
    return u, summary
