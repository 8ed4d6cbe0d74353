"""Placement policies: the ones the engine runs (base: the numba @cfunc ABI
and the Policy class; builtin: fifo and hotness), and their offline
evaluation: replay of block-access traces against the policies (simulate),
the optimal offline bound (belady) and synthetic trace generators (traces)."""
from . import traces
from .base import ON_ACCESS, PREFETCH, PROMOTE, SELECT_VICTIMS, Policy
from .simulate import POLICIES, belady, simulate

__all__ = ["ON_ACCESS", "POLICIES", "PREFETCH", "PROMOTE", "Policy", "SELECT_VICTIMS", "belady", "simulate",
           "traces"]
