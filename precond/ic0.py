"""Incomplete Cholesky IC(0) on the 5-point stencil, applied by anti-diagonal wavefronts.

In natural order (k = i*ny + j) write A = D - W - W^T with W the west/south couplings.
IC(0) keeps the stencil's pattern: M = (E - W) E^-1 (E - W)^T, with the pivots
e_k = d_k - cw_k^2 / e_west - cs_k^2 / e_south. Cells on one anti-diagonal i + j = s depend
only on the previous one, so each triangular solve is nx + ny - 1 vectorised steps (the
same code on CPU and CUDA), not n scalar ones. The factor is exact natural-order IC(0);
a pivot that falls below `pivot_floor` times its diagonal is reset to the diagonal, which
keeps M SPD.
"""
from __future__ import annotations

import torch

from .system import PoissonSystem


def _wave_order(nx: int, ny: int, device: torch.device) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Padded flat indices of all cells sorted by anti-diagonal, and each wave's slice bounds.

    The padded layout is (nx + 2, ny + 2) with cell (i, j) at (i + 1, j + 1), so a neighbour
    is a fixed offset away and reads off the grid land on zeros.
    """
    i = torch.arange(nx).repeat_interleave(ny)
    j = torch.arange(ny).repeat(nx)
    order = torch.argsort((i + j) * nx + i)
    counts = torch.bincount((i + j)[order], minlength=nx + ny - 1).tolist()
    bounds, start = [], 0
    for c in counts:
        bounds.append((start, start + c))
        start += c
    padded = (i[order] + 1) * (ny + 2) + (j[order] + 1)
    return padded.to(device), bounds


class IC0:
    """ic0: natural-order incomplete Cholesky with zero fill."""

    name = "ic0"
    pivot_floor = 1e-3

    def setup(self, system: PoissonSystem) -> None:
        nx, ny = system.shape
        dev, dt = system.device, system.dtype
        self.stride = ny + 2
        self.idx, self.waves = _wave_order(nx, ny, dev)
        pad = lambda: torch.zeros((nx + 2) * (ny + 2), dtype=dt, device=dev)
        cw, cs, d = pad(), pad(), pad()
        cw.view(nx + 2, ny + 2)[2:nx + 1, 1:ny + 1] = system.cx[:-1]
        cs.view(nx + 2, ny + 2)[1:nx + 1, 2:ny + 1] = system.cy[:, :-1]
        d.view(nx + 2, ny + 2)[1:nx + 1, 1:ny + 1] = system.diag
        self.cw, self.cs = cw[self.idx], cs[self.idx]             # in wave order
        self.ce = cw[self.idx + self.stride]                        # coupling to the east, wave order
        self.cn = cs[self.idx + 1]                                  # coupling to the north, wave order
        inv_e = pad()
        for lo, hi in self.waves:
            k = self.idx[lo:hi]
            piv = d[k] - self.cw[lo:hi] ** 2 * inv_e[k - self.stride] - self.cs[lo:hi] ** 2 * inv_e[k - 1]
            inv_e[k] = 1.0 / torch.where(piv > self.pivot_floor * d[k], piv, d[k])
        self.inv_e = inv_e[self.idx]
        self.cells = (torch.div(self.idx, self.stride, rounding_mode="floor") - 1) * ny + self.idx % self.stride - 1
        self._buf = pad()

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        s, idx = self.stride, self.idx
        y = self._buf.clone()
        rw = r[self.cells]
        for lo, hi in self.waves:                                   # (E - W) y = r
            k = idx[lo:hi]
            t = torch.addcmul(rw[lo:hi], self.cw[lo:hi], y[k - s])
            t.addcmul_(self.cs[lo:hi], y[k - 1])
            y[k] = t * self.inv_e[lo:hi]
        z = self._buf.clone()
        for lo, hi in reversed(self.waves):                         # (E - W^T) z = E y
            k = idx[lo:hi]
            t = torch.mul(self.ce[lo:hi], z[k + s])
            t.addcmul_(self.cn[lo:hi], z[k + 1])
            z[k] = torch.addcmul(y[k], t, self.inv_e[lo:hi])
        out = torch.empty_like(r)
        out[self.cells] = z[idx]
        return out
