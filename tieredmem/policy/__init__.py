"""Offline evaluation of placement policies: replay block-access traces
against the built-in policies (simulate), the optimal offline bound (belady)
and synthetic trace generators (traces)."""
from . import traces
from .simulate import POLICIES, belady, simulate

__all__ = ["POLICIES", "belady", "simulate", "traces"]
