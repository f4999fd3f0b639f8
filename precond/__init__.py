"""Solving A p = b for 5-point Poisson systems: PCG with classical and learned preconditioners."""
from .memory import estimate_memory
from .pcg import Preconditioner, SolveResult, pcg
from .solver import METHODS, PreconditionerUnavailable, Solver, make_preconditioner, solve
from .system import PoissonSystem

__all__ = ["PoissonSystem", "Preconditioner", "SolveResult", "pcg", "Solver", "solve", "METHODS",
           "PreconditionerUnavailable", "make_preconditioner", "estimate_memory"]
