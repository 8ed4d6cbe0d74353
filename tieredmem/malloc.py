"""The malloc interposer (csrc/preload/malloc_interpose.c) seen from Python.

`tieredmem run` preloads the library (LD_PRELOAD, by re-executing the
interpreter) and attaches its pool: from then on the C library's allocations
of at least the threshold are pool memory. See docs/malloc.md."""
import ctypes
import importlib.machinery
import pathlib

from ._engine import ffi, lib


def library_path():
    """The interposer's shared library in this package, or None if not built."""
    here = pathlib.Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_malloc_interpose{suffix}"
        if path.is_file():
            return path
    return None


def _entry(name):
    """The interposer's function `name` if it is loaded in this process, else None."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except AttributeError:
        return None


_attach = _entry("tm_interpose_attach")
_detach = _entry("tm_interpose_detach")
_counts = _entry("tm_interpose_counts")
_arena_counts = _entry("tm_interpose_arena_counts")


def _entry_with_gil(name):
    """The interposer's function `name`, called holding the GIL (ctypes.PyDLL), or None."""
    try:
        return getattr(ctypes.PyDLL(None), name)
    except AttributeError:
        return None


_arenas_install = _entry_with_gil("tm_interpose_arenas_install")


def loaded() -> bool:
    """True if the interposer is preloaded in this process."""
    return _attach is not None


def counts() -> dict:
    """Since the process started: the C library's allocations the pool served
    ("allocations") and the bytes they asked for ("bytes"); zeros if the
    interposer is not loaded."""
    out = (ctypes.c_uint64 * 2)()
    if _counts is not None:
        _counts(out)
    return {"allocations": out[0], "bytes": out[1]}


def arena_counts() -> dict:
    """pymalloc's arenas (install_arenas): "installed", the arenas the pool
    served ("pool") and took back ("pool_freed"), the arenas the previous
    allocator served since the install ("other") and took back ("other_freed",
    also ones from before), and the bytes of pool arenas now ("pool_bytes");
    zeros if the interposer is not loaded."""
    out = (ctypes.c_uint64 * 6)()
    if _arena_counts is not None:
        _arena_counts(out)
    names = ("installed", "pool", "pool_freed", "other", "other_freed", "pool_bytes")
    return dict(zip(names, (bool(out[0]), *out[1:])))


# Arenas (bytes) the C library keeps before the pool gets any: the
# interpreter's own working set. At a budget of 8 MiB, pandas' tests with
# every arena in the pool ran over 10x slower (the interpreter thrashed).
PYMALLOC_FLOOR = 64 << 20


def install_arenas(floor=PYMALLOC_FLOOR) -> bool:
    """Make the interposer pymalloc's arena allocator (PyObject_SetArenaAllocator),
    for the life of the process: from then on Python's small objects (str,
    int, tuple, ... below 512 bytes) are made in arenas of the attached pool,
    when one is attached and its block size is at most an arena (1 MiB), once
    `floor` bytes of arenas are the previous allocator's, and in the previous
    allocator's otherwise (docs/malloc.md). False if the interposer is not
    loaded; True if installed, now or before (a later floor is ignored)."""
    if _arenas_install is None:
        return False
    if floor < 0:
        raise ValueError(f"floor must be at least 0 bytes, not {floor}")
    api = ctypes.pythonapi
    _arenas_install(ctypes.c_void_p(ctypes.cast(api.PyObject_GetArenaAllocator, ctypes.c_void_p).value),
                    ctypes.c_void_p(ctypes.cast(api.PyObject_SetArenaAllocator, ctypes.c_void_p).value),
                    ctypes.c_int64(floor))
    return True


def _address(name):
    return ctypes.c_void_p(int(ffi.cast("uintptr_t", ffi.addressof(lib, name))))


def attach(pool, threshold=None, arenas=False, arena_floor=PYMALLOC_FLOOR):
    """Serve the C library's allocations of at least `threshold` bytes (default:
    the pool's threshold), and at least a block, from `pool` until the pool is
    closed: a smaller one would take a whole block of the DRAM budget. With
    `arenas`, pymalloc's arenas too, past the first `arena_floor` bytes
    (install_arenas; `run` does this): objects
    made meanwhile keep their arenas, and so the engine, alive after the pool
    is closed, until the last object in them goes. False if the interposer is
    not loaded, or has had its fill of arenas (16)."""
    if not loaded():
        return False
    engine = pool._open_engine()
    thr = max(pool.threshold if threshold is None else pool._parse_threshold(threshold), pool.block_size)
    arena_len = lib.tm_get_meta(engine).nblocks * pool.block_size
    handle = ctypes.c_void_p(int(ffi.cast("uintptr_t", engine)))
    arena = ctypes.c_void_p(int(ffi.cast("uintptr_t", lib.tm_arena_base(engine))))
    ok = _attach(handle, ctypes.c_size_t(thr), ctypes.c_size_t(pool.block_size), arena, ctypes.c_size_t(arena_len),
                 *(_address(f) for f in ("tm_alloc", "tm_free", "tm_alloc_size", "tm_pool_of", "tm_in_engine"))) == 0
    if ok and arenas:
        install_arenas(arena_floor)
    return ok


def detach(engine):
    """Allocate nothing more from the engine handle `engine` (Pool.close calls
    this before the handle can be dropped); its allocations stay valid."""
    if _detach is not None:
        _detach(ctypes.c_void_p(int(ffi.cast("uintptr_t", engine))))
