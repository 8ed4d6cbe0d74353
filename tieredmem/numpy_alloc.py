"""Drop-in numpy allocator: NEP 49 handlers (csrc/numpy_handler.c) over pools.

    with tm.use(pool):      # arrays created in this context (thread or async
        a = np.ones(2**28)  # task) of >= threshold bytes live in the pool
    tm.install(pool)        # every thread, including threads started later
    tm.uninstall()          # numpy's default again for new arrays

Arrays keep their allocator after the scope ends, and free correctly
whichever handler is current then."""
import threading

from ._engine import lib

_lock = threading.Lock()
_ready = False
_installed = None  # the installed Pool, kept alive while installed


def _init():
    global _ready
    with _lock:
        if not _ready:
            if lib.tm_np_init() != 0:
                raise RuntimeError("tieredmem: cannot import numpy's C API")
            _ready = True


class use:
    """Context manager: the current context allocates numpy arrays of at least
    `threshold` bytes (default: the pool's) from `pool`. Re-entrant; each
    `with` restores what was current before it."""

    def __init__(self, pool, threshold=None):
        self.pool = pool
        self.threshold = pool.threshold if threshold is None else pool._parse_threshold(threshold)
        self._tokens = threading.local()

    def __enter__(self):
        handler = self.pool._handler(self.threshold)
        stack = self._tokens.__dict__.setdefault("stack", [])
        stack.append(lib.tm_np_set_context(handler))
        return self.pool

    def __exit__(self, *exc):
        lib.tm_np_restore_context(self._tokens.stack.pop())


def install(pool, threshold=None):
    """Make `pool` numpy's allocator process-wide, for every thread."""
    global _installed
    _init()
    if pool.closed:
        raise ValueError("install(): the pool is closed")
    thr = pool.threshold if threshold is None else pool._parse_threshold(threshold)
    if lib.tm_np_install(pool._engine(), thr) != 0:
        raise RuntimeError("tieredmem: cannot repoint numpy's default memory handler")
    _installed = pool


def uninstall():
    """New arrays use numpy's default allocator again; pool arrays stay valid."""
    global _installed
    if _ready:
        lib.tm_np_uninstall()
    _installed = None


def installed():
    """The installed Pool, or None."""
    return _installed
