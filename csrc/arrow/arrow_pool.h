/* arrow_pool.h: an arrow::MemoryPool whose large allocations come from a
 * tieredmem pool (see docs/arrow.md). Built per pyarrow version by
 * tieredmem/_arrow_build.py, not into the engine: Arrow's C++ ABI is that of
 * the pyarrow installed. */
#pragma once

#include <cstdint>

#include <arrow/memory_pool.h>

#include "tieredmem.h"

namespace tieredmem {

/* Take the engine's functions from the loaded cffi module at `path`
 * (tieredmem._engine): this extension must call the same engine instance
 * (its pool registry), not link a copy of it. Returns nullptr, or what is
 * missing. Call once, before anything else. */
const char *bind_engine(const char *path);

/* A new pool: allocations of at least `threshold` bytes from `pool` (pinned
 * until detached), the others from `small`; up to keep_limit bytes of freed
 * pool allocations are kept for reuse. Never freed: Arrow buffers keep a raw
 * pointer to their pool. */
arrow::MemoryPool *new_arrow_pool(tm_pool *pool, int64_t threshold, size_t keep_limit, arrow::MemoryPool *small);

/* From now on every allocation goes to the small pool, kept allocations are
 * freed and the tieredmem pool is unpinned; buffers already in it stay valid
 * and are freed into it. */
void detach_arrow_pool(arrow::MemoryPool *pool);

/* The pool's small allocator: where a new pool wrapping this one should send
 * its small allocations (so tieredmem pools never chain). */
arrow::MemoryPool *small_pool_of(arrow::MemoryPool *pool);

}  // namespace tieredmem
