"""HTP, the Hierarchical Transformer Preconditioner: an SPD approximate inverse of A built from H-matrix
blocks (dense leaf blocks, rank-r factors per cluster and level) whose corrections a transformer over
leaf tokens predicts.

Its parts, in the order they are built for a system:

    partition.py       the cluster tree: recursive coordinate bisection down to leaves of L cells
    coarse.py          the coarse space: r coarse functions per cluster (cached per grid shape)
    analytic.py        the analytic operator: block-Jacobi leaves, harmonic basis, Galerkin factors
    model.py           the network: transformer over leaf tokens, heads for the corrections
    hmatrix.py         M: the blocks composed as a symmetric multiplicative sweep, and its batched apply
    preconditioner.py  HTP: composes them (setup, apply) and reads / writes checkpoints

Training is precond/train.py (loop) and precond/loss.py (objectives).
"""
from .model import HTPConfig, HTPModel
from .preconditioner import DEFAULT_CHECKPOINT, HTP, LAYOUT

__all__ = ["HTP", "HTPConfig", "HTPModel", "DEFAULT_CHECKPOINT", "LAYOUT"]
