# cython: language_level=3
# distutils: language = c++
"""pyarrow.MemoryPool objects over tieredmem pools (csrc/arrow/arrow_pool.cc).

Compiled against the installed pyarrow by tieredmem/_arrow_build.py; use it
through tieredmem.arrow_pool()."""
from libc.stdint cimport int64_t, uintptr_t
from pyarrow.includes.libarrow cimport CMemoryPool
from pyarrow.lib cimport MemoryPool


cdef extern from "arrow_pool.h":
    ctypedef struct tm_pool:
        pass


cdef extern from "arrow_pool.h" namespace "tieredmem":
    const char *bind_engine(const char *path)
    CMemoryPool *new_arrow_pool(tm_pool *pool, int64_t threshold, CMemoryPool *small) except +
    void detach_arrow_pool(CMemoryPool *pool)
    CMemoryPool *small_pool_of(CMemoryPool *pool)


def bind(str engine_path):
    """Bind to the engine loaded from engine_path (tieredmem._engine)."""
    cdef const char *missing = bind_engine(engine_path.encode())
    if missing != NULL:
        raise ImportError(f"tieredmem arrow extension: cannot find {missing.decode()} in {engine_path}")


cdef class TieredMemoryPool(MemoryPool):
    """A pyarrow.MemoryPool whose allocations of at least `threshold` bytes
    live in a tieredmem Pool; make one with tieredmem.arrow_pool(pool)."""
    cdef readonly int64_t threshold

    def __init__(self):
        raise TypeError("use tieredmem.arrow_pool(pool) to make a TieredMemoryPool")

    def _detach(self):
        """Send every allocation to the small pool from now on (the pool closed)."""
        detach_arrow_pool(self.pool)

    def __repr__(self):
        return (f"<tieredmem.TieredMemoryPool threshold={self.threshold} "
                f"bytes_allocated={self.bytes_allocated()} max_memory={self.max_memory()}>")


def new(uintptr_t engine, int64_t threshold, MemoryPool small):
    """A TieredMemoryPool over a tieredmem engine handle, sending smaller
    allocations to `small`'s allocator (unwrapped if it is a TieredMemoryPool)."""
    cdef TieredMemoryPool obj = TieredMemoryPool.__new__(TieredMemoryPool)
    obj.init(new_arrow_pool(<tm_pool *>engine, threshold, small_pool_of(small.pool)))
    obj.threshold = threshold
    return obj
