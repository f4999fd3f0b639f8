"""HTP, the Hierarchical Transformer Preconditioner: an SPD H-matrix approximate inverse of A whose
corrections a transformer over leaf tokens predicts.

Its parts, in the order they are built for a system:

    partition.py       the cluster tree: recursive coordinate bisection down to leaves of L cells
    coarse.py          the coarse space: r coarse functions per cluster (cached per grid shape)
    analytic.py        the analytic operator: block-Jacobi leaves, harmonic basis, Galerkin factors
    model.py           the network: transformer over leaf tokens, heads for the corrections
    hmatrix.py         the H-matrix M = G G^T + eps I and its batched apply
    preconditioner.py  HTP: composes them (setup, apply) and reads / writes checkpoints

Training is precond/train.py (loop) and precond/loss.py (objectives).
"""
from .model import HTPConfig, HTPModel
from .preconditioner import DEFAULT_CHECKPOINT, HTP, LAYOUT

__all__ = ["HTP", "HTPConfig", "HTPModel", "DEFAULT_CHECKPOINT", "LAYOUT"]
