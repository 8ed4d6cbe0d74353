/* stream.c: streams, the sequential and strided patterns of faults: which
 * stream a fault continues, and the blocks a sequential stream has passed,
 * which go before the policy's victims (use-once, loops). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "block.h"

#define TM_MAX_STRIDE 256 /* blocks: farther apart, two faults are unrelated */

static int64_t grow(const struct tm_pool *p, int64_t window)
{
    return window * 2 > p->batch_blocks ? p->batch_blocks : window * 2;
}

/* Whether sequential stream s, whose window is a whole batch (sequential
 * faults confirmed it: one random fault's record walks over nothing, and a
 * hot set's resident blocks are not passed), the latest matched (or one
 * matched within the latest TM_STREAMS faults), walked from its next block to b without
 * faulting: every block in between is in DRAM or on its way there (readahead
 * mapped ahead of it, or the part of a loop its last pass left resident).
 * Such a fault continues it, so that the blocks it walked over are in its
 * passed region; else every run of resident blocks would split a pass into
 * records whose guards are kept and whose gaps no record has passed, and the
 * blocks a pass is about to read would be demoted in their place. The
 * latest one qualifies however many faults ago it matched: walking over
 * blocks parked by sampling takes hint faults, which match no stream. */
static int stream_walked(const struct tm_pool *p, const tm_stream *s, const tm_stream *latest, int64_t b)
{
    if (s->stride != 1 || s->window < p->batch_blocks || (s != latest && s->used + TM_STREAMS < p->st.faults) ||
        b - s->next > p->dram_blocks)
        return 0;
    for (int64_t x = s->next; x < b; x++)
        if (!(p->meta.flags[x] & TM_F_ALLOC) || (p->meta.tier[x] != TM_DRAM && !(p->meta.flags[x] & TM_F_BUSY)))
            return 0;
    return 1;
}

/* The stream a fault at b continues, its window grown; or a new stream in
 * the least recently used entry, with a stride guessed from the latest
 * fault, confirmed if the next fault keeps it. Advice on
 * b's range overrides: sequential starts at the largest window, random
 * keeps the smallest. */
tm_stream *tm_stream_of(struct tm_pool *p, int64_t b)
{
    tm_stream *found = NULL, *oldest = &p->streams[0], *latest = &p->streams[0];
    for (int i = 0; i < TM_STREAMS && !found; i++) {
        tm_stream *s = &p->streams[i];
        if (s->window && b >= s->next && (b <= s->next + s->window || b < s->ahead)) {
            s->stride = 1;
            found = s;
        } else if (s->window && s->stride > 1 && b == s->last + s->stride) {
            found = s;
        }
    }
    for (int i = 0; i < TM_STREAMS; i++) {
        tm_stream *s = &p->streams[i];
        if (s->used < oldest->used)
            oldest = s;
        if (s->used > latest->used)
            latest = s;
    }
    for (int i = 0; i < TM_STREAMS && !found; i++) {
        tm_stream *s = &p->streams[i];
        if (s->window && b > s->next && stream_walked(p, s, latest, b))
            found = s;
    }
    if (found) {
        found->window = grow(p, found->window);
    } else {
        int64_t d = latest->window ? b - latest->last : 0;
        found = oldest;
        *found = (tm_stream){.next = b + 1, .window = 1, .stride = d > 1 && d <= TM_MAX_STRIDE ? d : 1,
                             .start = b, .lo = b, .hi = b, .born = p->st.faults};
    }
    found->last = b;
    found->used = p->st.faults;
    int adv = tm_range_advice(p, b);
    if (adv == TM_ADV_SEQUENTIAL)
        found->window = p->batch_blocks;
    else if (adv == TM_ADV_RANDOM)
        found->window = 1;
    return found;
}

/* Blocks a sequential stream has passed are demoted before the policy is
 * asked, the most recently passed first. For a scan they are used once; for
 * a loop larger than DRAM the block just passed is the one needed last
 * (Belady's choice), so the blocks the loop's last pass did not reach stay
 * resident across passes and each pass reads about footprint - DRAM + guard.
 * A hot set outside the streams is left to the policy. The `guard` blocks
 * behind a stream's head are kept while the stream is active: code working
 * in chunks reads a chunk again just after passing it. It is not once it
 * has not matched for TM_STREAMS faults, or once a stream started since
 * behind its guard (a loop's next pass: its first victims are then the last
 * pass's last blocks, not the ones it is about to hit). docs/policies.md,
 * "Streams: use-once and loops", has the rule and the simulator's model. */
static int64_t stream_guard(const struct tm_pool *p)
{
    int64_t g = p->dram_blocks / 16;
    return g > p->batch_blocks ? g : p->batch_blocks;
}

/* Take b if it is resident, not advised hot and not one of the latest
 * faults' (marked BUSY: streams' regions may overlap). */
static int stream_takes(struct tm_pool *p, int64_t b)
{
    uint8_t f = p->meta.flags[b];
    if (p->meta.tier[b] != TM_DRAM || (f & (TM_F_ALLOC | TM_F_BUSY | TM_F_HOT)) != TM_F_ALLOC || tm_recent(p, b))
        return 0;
    tm_block_take_victim(p, b);
    return 1;
}

/* Take up to `want` blocks of stream s's passed region below `top`, from the
 * top down: first those passed since it was last looked at ([hi, top)), then
 * those below what was looked at ([start, lo)). [lo, hi) grows to cover what
 * is looked at; if a new look stops short of hi, it restarts there (blocks
 * in between are looked at again later). */
static int64_t stream_take(struct tm_pool *p, tm_stream *s, int64_t top, int64_t want, int64_t *out)
{
    int64_t n = 0, x = top - 1;
    for (; x >= s->hi && x >= s->start && n < want; x--)
        if (stream_takes(p, x))
            out[n++] = x;
    if (x >= s->hi && x >= s->start) { /* stopped short of the old range */
        s->lo = x + 1;
        s->hi = top;
        return n;
    }
    if (top > s->hi)
        s->hi = top;
    for (x = s->lo - 1; x >= s->start && n < want; x--)
        if (stream_takes(p, x))
            out[n++] = x;
    s->lo = x + 1;
    return n;
}

static int stream_active(const struct tm_pool *p, const tm_stream *s, int64_t guard)
{
    if (s->used + TM_STREAMS < p->st.faults)
        return 0;
    for (int i = 0; i < TM_STREAMS; i++) {
        const tm_stream *t = &p->streams[i];
        if (t->window && t->born > s->used && t->start < s->next - guard)
            return 0;
    }
    return 1;
}

int64_t tm_stream_victims(struct tm_pool *p, int64_t want, int64_t *out)
{
    tm_stream *order[TM_STREAMS];
    int ns = 0;
    for (int i = 0; i < TM_STREAMS; i++) { /* sequential ones, most recently used first */
        tm_stream *s = &p->streams[i];
        if (!s->window || s->stride != 1)
            continue;
        int k = ns++;
        for (; k > 0 && order[k - 1]->used < s->used; k--)
            order[k] = order[k - 1];
        order[k] = s;
    }
    int64_t n = 0, guard = stream_guard(p);
    uint8_t active[TM_STREAMS];
    for (int i = 0; i < ns && n < want; i++) {
        tm_stream *s = order[i];
        active[i] = (uint8_t)stream_active(p, s, guard);
        int64_t top = active[i] ? s->next - guard : s->next;
        if (top > s->start)
            n += stream_take(p, s, top, want - n, out + n);
    }
    /* Before the policy: guarded blocks the stream's latest fault has
     * passed, the most recent first (the policy could take blocks mapped
     * ahead of a stream, certain to be read again). */
    for (int i = 0; i < ns && n < want; i++) {
        tm_stream *s = order[i];
        int64_t lo = s->next - guard > s->start ? s->next - guard : s->start;
        for (int64_t x = s->last - 1; active[i] && x >= lo && n < want; x--)
            if (stream_takes(p, x))
                out[n++] = x;
    }
    p->st.stream_victims += (uint64_t)n;
    return n;
}
