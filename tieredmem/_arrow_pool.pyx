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
    CMemoryPool *new_arrow_pool(tm_pool *pool, int64_t threshold, size_t keep_limit, CMemoryPool *small) except +
    void detach_arrow_pool(CMemoryPool *pool)
    CMemoryPool *small_pool_of(CMemoryPool *pool)


def bind(str engine_path):
    """Bind to the engine loaded from engine_path (tieredmem._engine)."""
    cdef const char *missing = bind_engine(engine_path.encode())
    if missing != NULL:
        raise ImportError(f"tieredmem arrow extension: cannot find {missing.decode()} in {engine_path}")


cdef class TieredMemoryPool(MemoryPool):
    """A pyarrow.MemoryPool whose allocations of at least `threshold` bytes
    live in the tieredmem Pool `tieredmem_pool` (kept alive by this object);
    make one with tieredmem.arrow_pool(pool)."""
    cdef readonly int64_t threshold
    cdef readonly object tieredmem_pool

    def __init__(self):
        raise TypeError("use tieredmem.arrow_pool(pool) to make a TieredMemoryPool")

    def release_unused(self):
        """Give back the freed pool buffers kept for reuse, and ask the small
        pool to return what it holds. (pyarrow's MemoryPool.release_unused
        acts on the default pool, whichever object it is called on.)"""
        with nogil:
            self.pool.ReleaseUnused()

    def __repr__(self):
        return (f"<tieredmem.TieredMemoryPool threshold={self.threshold} "
                f"bytes_allocated={self.bytes_allocated()} max_memory={self.max_memory()}>")


def new_pool(uintptr_t engine, int64_t threshold, size_t keep_limit, MemoryPool small):
    """The address of a new C++ pool over a tieredmem engine handle, keeping
    up to keep_limit bytes of freed pool allocations for reuse and sending
    smaller allocations to `small`'s allocator (unwrapped if it is one of
    ours). Never freed."""
    return <uintptr_t>new_arrow_pool(<tm_pool *>engine, threshold, keep_limit, small_pool_of(small.pool))


def wrap(uintptr_t address, int64_t threshold, tieredmem_pool):
    """A TieredMemoryPool object for the C++ pool at `address`."""
    cdef TieredMemoryPool obj = TieredMemoryPool.__new__(TieredMemoryPool)
    obj.init(<CMemoryPool *>address)
    obj.threshold = threshold
    obj.tieredmem_pool = tieredmem_pool
    return obj


def detach(uintptr_t address):
    """Every new allocation of the C++ pool at `address` goes to its small
    pool from now on (its tieredmem pool closed)."""
    detach_arrow_pool(<CMemoryPool *>address)
