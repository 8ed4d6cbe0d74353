"""tieredmem: tiered memory for numpy and pandas inside one Python process.

A Pool keeps the arrays it hands out under a hard DRAM budget: cold blocks
are demoted to a persistent-memory tier and an NVMe tier and promoted back
when touched, by page faults that the engine (csrc/) serves itself with
userfaultfd. Arrays are plain numpy arrays over ordinary pointers."""
from .arrow_alloc import arrow_pool  # imports pyarrow only when called
from .numpy_alloc import install, installed, uninstall, use
from .pool import Pool, policy_names
from .sharing import Share
from .sizes import parse_size
from ._engine import lib as _lib

# The exit status of a forked child that touches pool memory it cannot be served (docs/fork.md).
FORK_UNSERVED_EXIT = _lib.TM_FORK_UNSERVED_EXIT

__all__ = ["FORK_UNSERVED_EXIT", "Pool", "Policy", "Share", "arrow_pool", "install", "installed", "parse_size", "policy_names", "uninstall", "use"]
__version__ = "0.1.0"


def __getattr__(name):
    # tm.policy imports numba, tm.metrics prometheus_client: only when asked
    # for, so `import tieredmem` and `tieredmem run` start fast.
    if name in ("policy", "metrics"):
        import importlib
        return importlib.import_module("." + name, __name__)
    if name == "Policy":
        from .policy.base import Policy
        return Policy
    raise AttributeError(f"module 'tieredmem' has no attribute {name!r}")
