"""pyarrow on pools: an Arrow memory pool over a Pool (docs/arrow.md).

    ap = tm.arrow_pool(pool)         # a pyarrow.MemoryPool
    pa.array(data, memory_pool=ap)   # buffers of >= threshold bytes in the pool
    tm.install(pool)                 # also pyarrow's default pool, process-wide

Nothing here imports pyarrow until it is asked for: install() before the
program imports pyarrow waits for that import (a finder on sys.meta_path),
so a program that never uses pyarrow does not pay for importing it."""
import functools
import importlib.util
import sys
import threading
import warnings
import weakref

from ._engine import ffi

_lock = threading.RLock()
# Pool -> {threshold: address of its C++ pool}: one per pool and threshold,
# never freed (Arrow buffers keep a raw pointer to their pool).
_made = weakref.WeakKeyDictionary()
_previous = None  # pyarrow's default pool before install(), restored by uninstall()
_pending = None  # (pool, threshold) to install when pyarrow is imported
KEEP_SHARE = 4  # freed pool buffers kept for reuse: up to 1/KEEP_SHARE of the DRAM budget
MISSING = "tieredmem.arrow_pool needs pyarrow: pip install pyarrow (or pip install 'tieredmem[arrow]')"


def arrow_pool(pool, threshold=None):
    """A pyarrow.MemoryPool whose allocations of at least `threshold` bytes
    (default: the pool's) live in `pool`; smaller ones go to pyarrow's
    default pool of the moment (Arrow's own allocator). Asking again for
    the same pool and threshold gives the same Arrow pool (its figures are
    shared). The object keeps `pool` alive; after pool.close(), every new
    allocation goes to the small side, and buffers in the pool stay valid."""
    try:
        import pyarrow as pa
    except ImportError:
        raise ImportError(MISSING) from None
    thr = pool.threshold if threshold is None else pool._parse_threshold(threshold)
    from . import _arrow_build
    with _lock:
        engine = pool._open_engine()
        ext = _arrow_build.load()
        by_threshold = _made.setdefault(pool, {})
        address = by_threshold.get(thr)
        if address is None:
            keep = pool.stats()["dram"]["capacity"] // KEEP_SHARE
            address = ext.new_pool(int(ffi.cast("uintptr_t", engine)), thr, keep, pa.default_memory_pool())
            pool._on_close.append(functools.partial(ext.detach, address))
            by_threshold[thr] = address
    return ext.wrap(address, thr, pool)


def install(pool, threshold: int):
    """Make arrow_pool(pool, threshold) pyarrow's default pool: now if pyarrow
    is imported, else when it is; nothing if pyarrow is not installed. A
    failure (no compiler to build the extension, say) is a warning: numpy's
    side of install() stands."""
    global _pending
    with _lock:
        _pending = None
        if sys.modules.get("pyarrow") is not None:
            _set_default(pool, threshold)
        elif importlib.util.find_spec("pyarrow") is not None:  # None too where sys.modules blocks it
            _pending = (pool, threshold)
            if _HOOK not in sys.meta_path:
                sys.meta_path.insert(0, _HOOK)


def uninstall():
    """pyarrow's default pool is again the one before install()."""
    global _previous, _pending
    with _lock:
        _pending = None
        if _HOOK in sys.meta_path:
            sys.meta_path.remove(_HOOK)
        if _previous is not None:
            import pyarrow as pa
            pa.set_memory_pool(_previous)
            _previous = None


def _set_default(pool, threshold):
    global _previous
    import pyarrow as pa
    try:
        ap = arrow_pool(pool, threshold)
    except (ImportError, OSError, ValueError) as e:
        warnings.warn(f"tieredmem: pyarrow keeps its own memory pool: {e}", RuntimeWarning, stacklevel=3)
        return
    if _previous is None:
        _previous = pa.default_memory_pool()
    pa.set_memory_pool(ap)


def _on_pyarrow_imported():
    with _lock:
        if _HOOK in sys.meta_path:
            sys.meta_path.remove(_HOOK)
        if _pending is not None:
            _set_default(*_pending)


# Plain classes, not importlib.abc's: importing that costs ~25 ms at startup.
class _Loader:
    """pyarrow's own loader, then the pending install."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _on_pyarrow_imported()

    def __getattr__(self, name):  # resource readers and the like: pyarrow's loader answers
        return getattr(self.loader, name)


class _Finder:
    """Finds pyarrow as the other finders would, with _Loader around it."""

    def find_spec(self, name, path=None, target=None):
        if name != "pyarrow":
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    if spec.loader is not None:
                        spec.loader = _Loader(spec.loader)
                    return spec
        return None


_HOOK = _Finder()
