"""Drop-in numpy allocator: NEP 49 handlers (csrc/numpy_handler.c) over pools.

    with tm.use(pool):      # arrays created in this context (thread or async
        a = np.ones(2**28)  # task) of >= threshold bytes live in the pool
    tm.install(pool)        # every thread, including threads started later
    tm.uninstall()          # numpy's default again for new arrays

Arrays keep their allocator after the scope ends, and free correctly
whichever handler is current then. install() also makes the pool pyarrow's
default memory pool (arrow_alloc.py)."""
import contextvars
import threading

from . import arrow_alloc
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


# Scopes entered in the current context (thread or asyncio task), innermost
# last: (owner, token to restore numpy's previous handler). A context variable,
# like numpy's own handler, so interleaved tasks each undo their own scopes.
_scopes = contextvars.ContextVar("tieredmem_scopes", default=())


def _enter(owner, handler):
    _scopes.set(_scopes.get() + ((owner, lib.tm_np_set_context(handler)),))


def _exit(owner):
    """Undo the innermost scope that `owner` entered in this context."""
    stack = _scopes.get()
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][0] is owner:
            lib.tm_np_restore_context(stack[i][1])
            _scopes.set(stack[:i] + stack[i + 1:])
            return


class use:
    """Context manager: the current context allocates numpy arrays of at least
    `threshold` bytes (default: the pool's) from `pool`. Re-entrant; each
    `with` restores what was current before it."""

    def __init__(self, pool, threshold=None):
        self.pool = pool
        self.threshold = pool.threshold if threshold is None else pool._parse_threshold(threshold)

    def __enter__(self):
        _enter(self, self.pool._handler(self.threshold))
        return self.pool

    def __exit__(self, *exc):
        _exit(self)


def install(pool, threshold=None):
    """Make `pool` numpy's allocator process-wide, for every thread, and
    pyarrow's default memory pool (when pyarrow is installed)."""
    global _installed
    _init()
    if pool.closed:
        raise ValueError("install(): the pool is closed")
    thr = pool.threshold if threshold is None else pool._parse_threshold(threshold)
    if lib.tm_np_install(pool._engine(), thr) != 0:
        raise RuntimeError("tieredmem: cannot repoint numpy's default memory handler")
    _installed = pool
    arrow_alloc.install(pool, thr)


def uninstall():
    """New arrays use numpy's (and pyarrow's) default allocator again; pool
    arrays stay valid."""
    global _installed
    arrow_alloc.uninstall()
    if _ready:
        lib.tm_np_uninstall()
    _installed = None


def installed():
    """The installed Pool, or None (also once it has been closed)."""
    return _installed if _installed is not None and not _installed.closed else None
