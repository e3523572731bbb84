"""The elastic mesh: one node grid per section, springs between neighbouring nodes, a bending term,
and the measured displacements to neighbouring sections as zero-length springs across sections.

Node values are displacement fields u (sections, gy, gx, 2): aligned position x of section z shows
raw position x + u_z(x). The energy is quadratic, so its equilibrium is the solution of a sparse
linear system; `relax` finds it by preconditioned conjugate gradients without forming a matrix
(memory: a few arrays the size of u).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Springs:
    """Weights of the energy's terms relative to one measured displacement of weight 1."""

    stretch: float = 0.001  # springs between neighbouring nodes of a section
    bend: float = 0.01  # second differences within a section (leaves affine fields free)
    z_smooth: float = 1e-6  # second differences across sections (carries fields past flagged sections)
    anchor: float = 0.01  # pulls each section's field towards its affine part (stops drift along the stack)
    affine_anchor: float = 1e-3  # pulls each section's linear part (rotation, scale, shear) towards none
    strain: float = 0.0  # pulls each section's affine strain (scale and shear, not rotation) towards none


# the strain of a section's affine part as a quadratic form: its parameters a (3, 2: rows 1, y, x of the basis, columns
# the y and x components) flattened as 2 * i + c; e_yy = a[1, 0], e_xx = a[2, 1], e_xy = (a[2, 0] + a[1, 1]) / 2,
# weighed e_yy^2 + e_xx^2 + 2 e_xy^2; the rotation (a[1, 1] - a[2, 0]) / 2 costs nothing
STRAIN_FORM = np.zeros((6, 6))
STRAIN_FORM[2, 2] = STRAIN_FORM[5, 5] = 1.0
STRAIN_FORM[np.ix_([3, 4], [3, 4])] = 0.5


def _diff_t(x: np.ndarray, axis: int, out: np.ndarray, weight: float) -> None:
    """out += weight * D^T D x for the first difference D along `axis`."""
    n = x.shape[axis]
    if n < 2:
        return
    lo = [slice(None)] * x.ndim
    hi = [slice(None)] * x.ndim
    lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
    d = weight * (x[tuple(hi)] - x[tuple(lo)])
    out[tuple(hi)] += d
    out[tuple(lo)] -= d


def _second_t(x: np.ndarray, axis: int, out: np.ndarray, weight: float) -> None:
    """out += weight * S^T S x for the second difference S along `axis`."""
    n = x.shape[axis]
    if n < 3:
        return
    s = [[slice(None)] * x.ndim for _ in range(3)]
    for i in range(3):
        s[i][axis] = slice(i, n - 2 + i)
    d = weight * (x[tuple(s[0])] - 2 * x[tuple(s[1])] + x[tuple(s[2])])
    out[tuple(s[0])] += d
    out[tuple(s[1])] -= 2 * d
    out[tuple(s[2])] += d


class MeshSystem:
    """The normal equations H u = b of the mesh energy, applied without forming H.

    The anchor term keeps the non-affine part of each field small where the measurements leave it
    free: structures that run obliquely through the sections would otherwise shear the stack
    a little more with every section.

    `weights[k]` (sections - k, gy, gx) weighs `targets[k]` (sections - k, gy, gx, 2), the wanted
    u_{z+k} - u_z at each node, for the section offsets k = 1, 2, ...
    """

    def __init__(self, weights: dict[int, np.ndarray], targets: dict[int, np.ndarray], rest: np.ndarray,
                 springs: Springs, phi: np.ndarray | None = None):
        self.weights, self.targets, self.springs = weights, targets, springs
        self.rest = rest  # the fields the anchor pulls towards (each section's affine part)
        self.shape = rest.shape
        self.strain = _StrainTerm(phi, springs.strain) if springs.strain and phi is not None else None

    def apply(self, u: np.ndarray) -> np.ndarray:
        s = self.springs
        out = s.anchor * u
        if self.strain is not None:
            out += self.strain.apply(u)
        for k, w in self.weights.items():
            d = w[..., None] * (u[k:] - u[:-k])
            out[k:] += d
            out[:-k] -= d
        for axis in (1, 2):
            _diff_t(u, axis, out, s.stretch)
            _second_t(u, axis, out, s.bend)
        _second_t(u, 0, out, s.z_smooth)
        return out

    def rhs(self) -> np.ndarray:
        b = self.springs.anchor * self.rest
        for k, w in self.weights.items():
            wt = w[..., None] * self.targets[k]
            b[k:] += wt
            b[:-k] -= wt
        return b

    def diagonal(self) -> np.ndarray:
        s = self.springs
        diag = np.full(self.shape, s.anchor)
        if self.strain is not None:
            diag += self.strain.diagonal()[None]
        for k, w in self.weights.items():
            diag[k:] += w[..., None]
            diag[:-k] += w[..., None]
        ones = np.ones(self.shape)
        for axis, weight, kind in ((1, s.stretch, 1), (2, s.stretch, 1), (1, s.bend, 2), (2, s.bend, 2),
                                   (0, s.z_smooth, 2)):
            n = self.shape[axis]
            counts = np.zeros(n)
            if kind == 1 and n >= 2:
                counts[:-1] += 1
                counts[1:] += 1
            elif kind == 2 and n >= 3:
                coef = np.zeros(n)
                coef[:-2] += 1
                coef[1:-1] += 4
                coef[2:] += 1
                counts = coef
            shape = [1] * len(self.shape)
            shape[axis] = n
            diag += weight * counts.reshape(shape) * ones
        return diag


class _StrainTerm:
    """weight * nodes * STRAIN_FORM of each section's affine part, the least-squares fit of its field to the basis
    `phi` (gy, gx, 3: 1, y, x): its scale and shear held, its rotation free."""

    def __init__(self, phi: np.ndarray, weight: float):
        f = phi.reshape(-1, 3)
        self.fit = np.linalg.pinv(f)  # (3, nodes): affine parameters of a field
        self.nodes_shape = phi.shape[:2]
        self.scale = weight * len(f)

    def apply(self, u: np.ndarray) -> np.ndarray:
        a = np.einsum("in,znc->zic", self.fit, u.reshape(len(u), -1, 2)).reshape(len(u), 6)
        q = (a @ STRAIN_FORM).reshape(len(u), 3, 2)
        return self.scale * np.einsum("in,zic->znc", self.fit, q).reshape(u.shape)

    def diagonal(self) -> np.ndarray:
        """(gy, gx, 2): the term's diagonal, per node and component."""
        m = self.fit
        per_component = [np.einsum("in,ij,jn->n", m, STRAIN_FORM[c::2, c::2], m) for c in (0, 1)]
        return self.scale * np.stack(per_component, axis=-1).reshape(*self.nodes_shape, 2)


def relax(system: MeshSystem, u0: np.ndarray, iterations: int = 2000, tol: float = 1e-6) -> tuple[np.ndarray, int]:
    """Equilibrium of the mesh by Jacobi-preconditioned conjugate gradients from `u0`."""
    b = system.rhs()
    inv = 1.0 / system.diagonal()
    u = u0.copy()
    r = b - system.apply(u)
    z = inv * r
    p = z.copy()
    rz = float(np.vdot(r, z))
    norm_b = max(float(np.linalg.norm(b)), 1e-12)
    done = 0
    for done in range(1, iterations + 1):  # noqa: B007 (the count is returned)
        hp = system.apply(p)
        alpha = rz / max(float(np.vdot(p, hp)), 1e-300)
        u += alpha * p
        r -= alpha * hp
        if np.linalg.norm(r) < tol * norm_b:
            break
        z = inv * r
        rz_new = float(np.vdot(r, z))
        p = z + (rz_new / rz) * p
        rz = rz_new
    return u, done


def interpolate(field: np.ndarray, axes: tuple[np.ndarray, np.ndarray], qy: np.ndarray, qx: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a node field (gy, gx, C) at points (qy, qx), continued linearly
    beyond the outer nodes; `axes` are the node positions (evenly spaced) along y and x."""
    parts = []
    for nodes, q in zip(axes, (qy, qx)):
        if len(nodes) == 1:
            parts.append((np.zeros(q.shape, int), np.zeros(q.shape)))
            continue
        t = (q - nodes[0]) / float(nodes[1] - nodes[0])
        i = np.clip(np.floor(t).astype(int), 0, len(nodes) - 2)
        parts.append((i, t - i))
    (iy, fy), (ix, fx) = parts
    gy, gx = field.shape[:2]
    iy1 = np.minimum(iy + 1, gy - 1)
    ix1 = np.minimum(ix + 1, gx - 1)
    fy, fx = fy[..., None], fx[..., None]
    return ((1 - fy) * ((1 - fx) * field[iy, ix] + fx * field[iy, ix1])
            + fy * ((1 - fx) * field[iy1, ix] + fx * field[iy1, ix1]))
