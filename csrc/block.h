/* block.h: a block's states and the transitions between them.
 *
 * A block's state is held in its tier, its flags and its engine flags (the
 * first two are what policies read, through the ABI of tieredmem.h);
 * tm_block_state names it. Every change of state goes through one function
 * below, which checks the state it starts from (tm_assert): a block in flight
 * (loading, read ahead, a victim) belongs to one mover, and no other can take
 * it. All of them run with the pool lock held.
 *
 *   FREE       not allocated
 *   UNBACKED   allocated, never written: a fault fills it with zeros
 *   RESIDENT   in DRAM, mapped in the arena; clean (its slot holds its data,
 *              its pages write-protected) unless TM_F_DIRTY; or zeroed
 *              (TM_X_ZERO: a reused spare, no slot, its content checked
 *              at eviction)
 *   PARKED     in DRAM, its pages in the shadow for a hint sample
 *   LOWER      in PMEM or NVMe, at its slot
 *   LOADING    being zero-filled or read into DRAM, outside the lock
 *   READAHEAD  in PMEM or NVMe and being read ahead of a stream
 *   VICTIM     in DRAM and being demoted (written back, or dropped if clean)
 *   CASCADING  in PMEM and being moved to NVMe, outside the lock
 *   SPARE      not allocated, but its pages still mapped in the arena
 *              (writable): the next allocation there reuses them (spare.c)
 *
 *   UNBACKED, LOWER -> LOADING -> RESIDENT (or back, if it did not arrive)
 *   LOWER -> READAHEAD -> LOADING, or back to LOWER
 *   RESIDENT, PARKED -> VICTIM -> LOWER, or RESIDENT (pinned, or not written),
 *                      or UNBACKED (a zero block, dropped)
 *   RESIDENT <-> PARKED (sampling)
 *   LOWER (PMEM) -> CASCADING -> LOWER (NVMe), or back to PMEM (the cascade)
 *   any but in flight -> FREE (released)
 *   RESIDENT -> SPARE (freed) -> RESIDENT (allocated again), or FREE (given back) */
#ifndef TIEREDMEM_BLOCK_H
#define TIEREDMEM_BLOCK_H

#include "internal.h"

enum tm_block_state {
    TM_BS_FREE,
    TM_BS_UNBACKED,
    TM_BS_RESIDENT,
    TM_BS_PARKED,
    TM_BS_LOWER,
    TM_BS_LOADING,
    TM_BS_READAHEAD,
    TM_BS_VICTIM,
    TM_BS_CASCADING,
    TM_BS_SPARE,
};

static inline int tm_tier_is_lower(uint8_t tier)
{
    return tier == TM_PMEM || tier == TM_NVME;
}

static inline enum tm_block_state tm_block_state(const struct tm_pool *p, int64_t b)
{
    uint8_t f = p->meta.flags[b], t = p->meta.tier[b];
    if (p->xflags[b] & TM_X_LOADING)
        return TM_BS_LOADING;
    if (p->xflags[b] & TM_X_SPARE)
        return TM_BS_SPARE;
    if (!(f & TM_F_ALLOC))
        return TM_BS_FREE;
    if (t == TM_DRAM)
        return (f & TM_F_BUSY) ? TM_BS_VICTIM : (f & TM_F_SAMPLED) ? TM_BS_PARKED : TM_BS_RESIDENT;
    if (t == TM_UNBACKED)
        return TM_BS_UNBACKED;
    if (!(f & TM_F_BUSY))
        return TM_BS_LOWER;
    return (p->xflags[b] & TM_X_CASCADE) ? TM_BS_CASCADING : TM_BS_READAHEAD;
}

/* Whether a mover may take b: allocated and not in flight. */
static inline int tm_block_free_to_move(const struct tm_pool *p, int64_t b)
{
    return (p->meta.flags[b] & (TM_F_ALLOC | TM_F_BUSY)) == TM_F_ALLOC;
}

/* UNBACKED or LOWER -> LOADING: its room is the caller's to reserve. */
static inline void tm_block_start_load(struct tm_pool *p, int64_t b)
{
    enum tm_block_state s = tm_block_state(p, b);
    tm_assert(s == TM_BS_UNBACKED || s == TM_BS_LOWER);
    p->meta.flags[b] |= TM_F_BUSY;
    p->xflags[b] |= TM_X_LOADING;
}

/* READAHEAD -> LOADING: a readahead's block kept to be mapped. */
static inline void tm_block_keep_readahead(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_READAHEAD);
    p->xflags[b] |= TM_X_LOADING;
}

/* LOADING -> UNBACKED or LOWER, as before: then mapped with
 * tm_block_resident, or left below if it did not arrive. */
static inline void tm_block_end_load(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_LOADING);
    p->meta.flags[b] &= (uint8_t)~TM_F_BUSY;
    p->xflags[b] &= (uint8_t)~TM_X_LOADING;
}

/* UNBACKED or LOWER (loaded) -> RESIDENT, dirty if its slot does not hold
 * what is mapped. */
static inline void tm_block_resident(struct tm_pool *p, int64_t b, int dirty)
{
    enum tm_block_state s = tm_block_state(p, b);
    tm_assert(s == TM_BS_UNBACKED || s == TM_BS_LOWER);
    p->meta.tier[b] = TM_DRAM;
    p->xflags[b] = 0;
    if (dirty)
        p->meta.flags[b] |= TM_F_DIRTY;
}

/* LOWER -> READAHEAD. */
static inline void tm_block_start_readahead(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_LOWER);
    p->meta.flags[b] |= TM_F_BUSY;
}

/* READAHEAD -> LOWER: dropped, or not kept. */
static inline void tm_block_end_readahead(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_READAHEAD);
    p->meta.flags[b] &= (uint8_t)~TM_F_BUSY;
}

/* RESIDENT -> PARKED: flagged for a hint sample, its pages then moved to the
 * shadow by the caller (who unparks it if they would not move). */
static inline void tm_block_park(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_RESIDENT);
    p->meta.flags[b] |= TM_F_SAMPLED;
}

/* PARKED -> RESIDENT: mapped back (an access, a fork), or never moved. */
static inline void tm_block_unpark(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_PARKED);
    p->meta.flags[b] &= (uint8_t)~TM_F_SAMPLED;
}

/* RESIDENT or PARKED -> VICTIM. */
static inline void tm_block_take_victim(struct tm_pool *p, int64_t b)
{
    enum tm_block_state s = tm_block_state(p, b);
    tm_assert(s == TM_BS_RESIDENT || s == TM_BS_PARKED);
    p->meta.flags[b] |= TM_F_BUSY;
}

/* VICTIM -> RESIDENT (or PARKED), untouched: it could not be unmapped. */
static inline void tm_block_victim_pinned(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_VICTIM);
    p->meta.flags[b] &= (uint8_t)~TM_F_BUSY;
}

/* VICTIM -> RESIDENT, mapped again and dirty: its write failed. */
static inline void tm_block_victim_stays(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_VICTIM);
    p->meta.flags[b] = (uint8_t)((p->meta.flags[b] & ~(TM_F_BUSY | TM_F_SAMPLED)) | TM_F_DIRTY);
    p->xflags[b] = 0;
}

/* VICTIM -> UNBACKED: a zeroed block found still all zero, dropped; it is
 * zero-filled again when touched. */
static inline void tm_block_victim_zeroed(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_VICTIM && (p->xflags[b] & TM_X_ZERO) &&
              !(p->meta.flags[b] & TM_F_DIRTY) && p->meta.slot[b] == TM_NO_SLOT);
    p->meta.tier[b] = TM_UNBACKED;
    p->meta.flags[b] &= (uint8_t)~(TM_F_BUSY | TM_F_SAMPLED | TM_F_REF);
    p->xflags[b] = 0;
}

/* b's pages were mapped writable and unprotected (moved back from the
 * shadow, or made this process's own), so whether it is written from now on
 * is not seen: dirty if `written`, else a clean block's checksum against its
 * slot's decides at demotion (a zeroed block's content does anyway). */
static inline void tm_block_unprotected(struct tm_pool *p, int64_t b, int written)
{
    if (written) {
        p->meta.flags[b] |= TM_F_DIRTY;
        p->xflags[b] &= (uint8_t)~(TM_X_ZERO | TM_X_VERIFY);
    } else if (!(p->meta.flags[b] & TM_F_DIRTY) && !(p->xflags[b] & TM_X_ZERO)) {
        p->xflags[b] |= TM_X_VERIFY;
    }
}

/* RESIDENT or PARKED, dirty (a reused spare, just zeroed) -> zeroed. */
static inline void tm_block_zeroed(struct tm_pool *p, int64_t b)
{
    enum tm_block_state s = tm_block_state(p, b);
    tm_assert((s == TM_BS_RESIDENT || s == TM_BS_PARKED) && p->meta.slot[b] == TM_NO_SLOT);
    p->meta.flags[b] &= (uint8_t)~TM_F_DIRTY;
    p->xflags[b] = TM_X_ZERO;
}

/* VICTIM -> LOWER, in tier `tier` where its slot is. */
static inline void tm_block_victim_left(struct tm_pool *p, int64_t b, int tier)
{
    tm_assert(tm_block_state(p, b) == TM_BS_VICTIM && tm_tier_is_lower((uint8_t)tier) &&
              p->meta.slot[b] != TM_NO_SLOT);
    p->meta.tier[b] = (uint8_t)tier;
    p->meta.flags[b] &= (uint8_t)~(TM_F_BUSY | TM_F_SAMPLED | TM_F_DIRTY | TM_F_REF);
    p->xflags[b] = 0;
}

/* LOWER (PMEM) -> CASCADING: its data is copied to an NVMe slot outside
 * the lock; a fault on it waits for the wake at the end. */
static inline void tm_block_start_cascade(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_LOWER && p->meta.tier[b] == TM_PMEM);
    p->meta.flags[b] |= TM_F_BUSY;
    p->xflags[b] |= TM_X_CASCADE;
}

/* CASCADING -> LOWER (NVMe), its new slot set by the caller. */
static inline void tm_block_cascaded(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_CASCADING && p->meta.tier[b] == TM_PMEM &&
              p->meta.slot[b] != TM_NO_SLOT);
    p->meta.tier[b] = TM_NVME;
    p->meta.flags[b] &= (uint8_t)~TM_F_BUSY;
    p->xflags[b] &= (uint8_t)~TM_X_CASCADE;
}

/* CASCADING -> LOWER (PMEM), as before: it could not be moved. */
static inline void tm_block_end_cascade(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_CASCADING);
    p->meta.flags[b] &= (uint8_t)~TM_F_BUSY;
    p->xflags[b] &= (uint8_t)~TM_X_CASCADE;
}

/* Anything not in flight -> FREE; poison stays (the allocator clears it). */
static inline void tm_block_release(struct tm_pool *p, int64_t b)
{
    enum tm_block_state s = tm_block_state(p, b);
    tm_assert(s != TM_BS_LOADING && s != TM_BS_READAHEAD && s != TM_BS_VICTIM && s != TM_BS_CASCADING);
    p->meta.tier[b] = TM_UNBACKED;
    p->meta.flags[b] &= TM_F_POISON;
    p->xflags[b] = 0;
    p->meta.access_count[b] = 0;
    p->meta.last_access[b] = 0;
}

/* RESIDENT -> SPARE: freed with its pages kept mapped; it reads as a free
 * block to everyone but spare.c (tier TM_UNBACKED, flags clear). */
static inline void tm_block_spare(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_RESIDENT && !(p->meta.flags[b] & TM_F_POISON));
    tm_block_release(p, b);
    p->xflags[b] = TM_X_SPARE;
}

/* SPARE -> RESIDENT: allocated again (the caller flagged it allocated),
 * dirty: no slot holds what its pages hold. */
static inline void tm_block_reuse(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_SPARE && (p->meta.flags[b] & TM_F_ALLOC));
    p->xflags[b] = 0;
    p->meta.tier[b] = TM_DRAM;
    p->meta.flags[b] |= TM_F_DIRTY;
}

/* SPARE -> FREE: its pages were given back. */
static inline void tm_block_spare_drop(struct tm_pool *p, int64_t b)
{
    tm_assert(tm_block_state(p, b) == TM_BS_SPARE);
    p->xflags[b] = 0;
}

#endif
