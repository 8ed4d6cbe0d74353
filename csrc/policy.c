/* policy.c: calling the policy's hooks and checking what they answer. A
 * bad answer is counted (policy_errors), named in the last error, and
 * replaced by the engine's own choice: a policy can make placement worse,
 * never wrong. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"

void tm_policy_info(struct tm_pool *p)
{
    int64_t *info = p->policy.info;
    if (!info)
        return;
    info[TM_INFO_ARENA_BLOCKS] = p->nblocks;
    info[TM_INFO_DRAM_BLOCKS] = p->dram_blocks;
    info[TM_INFO_RESIDENT] = p->resident;
    info[TM_INFO_SCAN_END] = p->scan_end;
    info[TM_INFO_BLOCK_SIZE] = (int64_t)p->bs;
    info[TM_INFO_NOW] = (int64_t)p->st.faults;
}

void tm_policy_access(struct tm_pool *p, int64_t b, int kind)
{
    if (p->trace && kind != TM_ACCESS_AHEAD) {
        if (p->trace_n < p->trace_cap) {
            p->trace[p->trace_n++] = b;
            p->st.trace_events++;
        } else {
            p->st.trace_dropped++;
        }
    }
    if (p->policy.on_access) {
        tm_policy_info(p);
        p->policy.on_access(p->policy.state, b, kind, (int64_t)p->st.faults);
    }
}

/* The policy's victims, each checked: marked BUSY, with the tier each
 * should go to in dest[] (0: the engine's choice). Returns how many; 0 when
 * there is no select_victims hook or its answer gave none (any bad answer
 * rejects it whole): the caller then uses CLOCK. */
int64_t tm_policy_victims(struct tm_pool *p, int64_t want, int64_t *out, uint8_t *dest)
{
    if (want <= 0)
        return 0;
    if (p->policy.select_victims) {
        tm_policy_info(p);
        int64_t n = p->policy.select_victims(p->policy.state, p->meta.tier, p->meta.flags, p->scan_end, want, out,
                                             dest);
        int ok = n >= 0 && n <= want;
        int64_t named = 0;
        for (; ok && named < n; named++) {
            int64_t b = out[named];
            ok = b >= 0 && b < p->scan_end && p->meta.tier[b] == TM_DRAM && !(p->xflags[b] & TM_X_NAMED) &&
                 (dest[named] == 0 || dest[named] == TM_PMEM || dest[named] == TM_NVME);
            if (ok)
                p->xflags[b] |= TM_X_NAMED; /* a block named twice is an error */
        }
        for (int64_t i = 0; i < named; i++)
            p->xflags[out[i]] &= (uint8_t)~TM_X_NAMED;
        /* Valid, but not taken: blocks in flight (being written back or
         * loaded: busy), and the blocks of the latest faults, since one
         * instruction may need them all at once and a policy that kept naming
         * them would have them evict each other forever. */
        int64_t kept = 0;
        for (int64_t i = 0; ok && i < n; i++) {
            int64_t b = out[i];
            if ((p->meta.flags[b] & TM_F_BUSY) || tm_recent(p, b))
                continue;
            tm_block_take_victim(p, b);
            out[kept] = b;
            dest[kept++] = dest[i];
        }
        if (kept > 0)
            return kept;
        if (!ok) {
            p->st.policy_errors++;
            tm_set_error(p, "policy select_victims returned an invalid answer (%lld blocks for %lld asked); "
                         "CLOCK used instead", (long long)n, (long long)want);
        }
        memset(dest, 0, (size_t)want);
    }
    return 0;
}

/* Append to list[0..n) those of cand[0..m) (which may be list + n) that
 * are allocated, in a lower tier, not busy and not listed yet; each other
 * one is an error of `who` (the hook that named it). Returns how many were
 * appended. */
int64_t tm_policy_take_lower(struct tm_pool *p, int64_t *list, int64_t n, const int64_t *cand, int64_t m,
                          const char *who)
{
    int64_t kept = n;
    for (int64_t i = 0; i < n; i++)
        p->xflags[list[i]] |= TM_X_NAMED; /* marks what is taken: no duplicates */
    for (int64_t i = 0; i < m; i++) {
        int64_t c = cand[i];
        int ok = c >= 0 && c < p->scan_end && tm_block_state(p, c) == TM_BS_LOWER && !(p->xflags[c] & TM_X_NAMED);
        if (!ok) {
            p->st.policy_errors++;
            tm_set_error(p, "policy %s named block %lld, which is not an allocated lower-tier block free to "
                         "move; skipped", who, (long long)c);
            continue;
        }
        if (p->meta.flags[c] & TM_F_POISON)
            continue; /* known unreadable: only a fault on it reads it again */
        p->xflags[c] |= TM_X_NAMED;
        list[kept++] = c;
    }
    for (int64_t i = 0; i < kept; i++)
        p->xflags[list[i]] &= (uint8_t)~TM_X_NAMED;
    return kept - n;
}

/* Add the policy's prefetch choices that are valid lower-tier blocks. */
int64_t tm_policy_prefetch(struct tm_pool *p, int64_t b, int64_t *list, int64_t n)
{
    int64_t room = p->batch_blocks - n;
    if (!p->policy.prefetch || room <= 0)
        return n;
    int64_t *extra = list + n;
    tm_policy_info(p);
    int64_t m = p->policy.prefetch(p->policy.state, p->meta.tier, p->meta.flags, p->scan_end, b, room, extra);
    if (m < 0 || m > room) {
        p->st.policy_errors++;
        tm_set_error(p, "policy prefetch returned %lld for at most %lld blocks", (long long)m, (long long)room);
        return n;
    }
    return n + tm_policy_take_lower(p, list, n, extra, m, "prefetch");
}
