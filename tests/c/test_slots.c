/* test_slots.c: the lower tiers' slot maps and the TIEREDMEM_INJECT parser
 * (csrc/tier.c).
 *
 * Links tier.c and os.c (tier.c's only outside calls are tm_os_now_ns, for
 * emulated speeds, and tm_assert's report); no stubs are needed. A tier is a
 * zeroed tm_tier given a slot map by tm_tier_init_slots and freed by
 * tm_tier_close (no backend: ops is NULL). Slot maps are next fit:
 * tm_tier_slot_alloc(t, hint) takes the first free slot at or after the hint
 * (UINT64_MAX or any hint past the end: the cursor, which is one past the
 * last slot handed out), wrapping round. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "check.h"
#include "internal.h"

#define NOHINT UINT64_MAX

static void open_tier(tm_tier *t, uint64_t nslots)
{
    memset(t, 0, sizeof *t);
    CHECK_EQ(tm_tier_init_slots(t, nslots), 0);
}

static bool slot_is_used(const tm_tier *t, uint64_t s)
{
    return (t->used_map[s >> 6] >> (s & 63)) & 1;
}

static void fill(tm_tier *t)
{
    for (uint64_t i = 0; i < t->nslots; i++)
        tm_tier_slot_alloc(t, NOHINT);
}

static void init_slots_gives_an_empty_map(void)
{
    tm_tier t;
    open_tier(&t, 130);
    CHECK_EQ(t.nslots, 130);
    CHECK_EQ(t.used, 0);
    CHECK_EQ(t.peak, 0);
    CHECK_EQ(t.cursor, 0);
    bool clear = true;
    for (uint64_t s = 0; s < 130; s++)
        clear &= !slot_is_used(&t, s) && t.csum[s] == 0;
    CHECKF(clear, "every slot free, every checksum 0");
    tm_tier_close(&t);
    CHECK(t.used_map == NULL && t.csum == NULL);
    CHECK_EQ(t.nslots, 0);
}

static void next_fit_gives_adjacent_slots_to_sequential_allocations(void)
{
    tm_tier t;
    open_tier(&t, 200);
    for (uint64_t i = 0; i < 150; i++)
        CHECK_EQ(tm_tier_slot_alloc(&t, NOHINT), i); /* across the words at 64 and 128 */
    CHECK_EQ(t.cursor, 150);
    /* a slot freed behind the cursor is not taken next: the run goes on */
    tm_tier_slot_free(&t, 10);
    CHECK_EQ(tm_tier_slot_alloc(&t, NOHINT), 150);
    CHECK_EQ(tm_tier_slot_alloc(&t, NOHINT), 151);
    CHECK(!slot_is_used(&t, 10));
    tm_tier_close(&t);
}

static void alloc_starts_at_the_hint_when_it_is_free(void)
{
    tm_tier t;
    open_tier(&t, 200);
    CHECK_EQ(tm_tier_slot_alloc(&t, 100), 100);
    CHECK_EQ(t.cursor, 101);
    CHECK_EQ(tm_tier_slot_alloc(&t, NOHINT), 101); /* the cursor follows the hint */
    /* a used hint: the next free slot after it */
    CHECK_EQ(tm_tier_slot_alloc(&t, 100), 102);
    CHECK_EQ(tm_tier_slot_alloc(&t, 5), 5);
    CHECK_EQ(tm_tier_slot_alloc(&t, 199), 199); /* the last slot */
    CHECK_EQ(tm_tier_slot_alloc(&t, 199), 0);   /* used: wraps to the first free */
    tm_tier_close(&t);
}

static void hint_past_the_end_falls_back_to_the_cursor(void)
{
    tm_tier t;
    open_tier(&t, 100);
    CHECK_EQ(tm_tier_slot_alloc(&t, 40), 40);
    CHECK_EQ(tm_tier_slot_alloc(&t, 100), 41);
    CHECK_EQ(tm_tier_slot_alloc(&t, 12345), 42);
    tm_tier_close(&t);
}

static void freed_slot_is_reused_after_the_cursor_wraps(void)
{
    tm_tier t;
    open_tier(&t, 10);
    fill(&t);
    CHECK_EQ(t.cursor, 10);
    tm_tier_slot_free(&t, 7);
    tm_tier_slot_free(&t, 3);
    CHECK_EQ(tm_tier_slot_alloc(&t, NOHINT), 3); /* from the end, round to the lowest free */
    CHECK_EQ(tm_tier_slot_alloc(&t, NOHINT), 7);
    CHECK_EQ(tm_tier_slot_alloc(&t, NOHINT), NOHINT);
    tm_tier_close(&t);
}

static void used_count_and_peak_follow_alloc_and_free(void)
{
    tm_tier t;
    open_tier(&t, 50);
    for (int i = 0; i < 20; i++)
        tm_tier_slot_alloc(&t, NOHINT);
    CHECK_EQ(t.used, 20);
    CHECK_EQ(t.peak, 20);
    for (uint64_t s = 0; s < 15; s++)
        tm_tier_slot_free(&t, s);
    CHECK_EQ(t.used, 5);
    CHECK_EQ(t.peak, 20); /* the high-water mark stays */
    for (int i = 0; i < 10; i++)
        tm_tier_slot_alloc(&t, NOHINT);
    CHECK_EQ(t.used, 15);
    CHECK_EQ(t.peak, 20);
    for (int i = 0; i < 35; i++)
        tm_tier_slot_alloc(&t, NOHINT);
    CHECK_EQ(t.used, 50);
    CHECK_EQ(t.peak, 50);
    tm_tier_slot_alloc(&t, NOHINT); /* full: no change */
    CHECK_EQ(t.used, 50);
    CHECK_EQ(t.peak, 50);
    tm_tier_close(&t);
}

static void full_map_returns_uint64_max(void)
{
    static const uint64_t sizes[] = {1, 2, 63, 64, 65, 127, 128, 129, 1000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        tm_tier t;
        open_tier(&t, sizes[i]);
        fill(&t);
        CHECKF(t.used == sizes[i], "%llu slots: used %llu after filling", (unsigned long long)sizes[i],
               (unsigned long long)t.used);
        bool all = true;
        for (uint64_t s = 0; s < sizes[i]; s++)
            all &= slot_is_used(&t, s);
        CHECKF(all, "%llu slots: every slot used after filling", (unsigned long long)sizes[i]);
        uint64_t hints[] = {NOHINT, 0, sizes[i] / 2, sizes[i] - 1, sizes[i]};
        for (size_t h = 0; h < sizeof hints / sizeof hints[0]; h++) {
            uint64_t s = tm_tier_slot_alloc(&t, hints[h]);
            CHECKF(s == NOHINT, "%llu slots, full, hint %lld: got slot %llu", (unsigned long long)sizes[i],
                   (long long)hints[h], (unsigned long long)s);
        }
        tm_tier_close(&t);
    }
    tm_tier t;
    open_tier(&t, 0); /* a tier with no slots is always full */
    CHECK_EQ(tm_tier_slot_alloc(&t, NOHINT), NOHINT);
    tm_tier_close(&t);
}

static void the_one_free_slot_is_found_from_every_hint(void)
{
    /* Every size whose last word is partly used or whole, every position of
     * the one free slot, every starting point: the scan never gives up
     * early and never hands out a slot past the end. */
    static const uint64_t sizes[] = {1, 2, 63, 64, 65, 127, 128, 129, 191, 200};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        uint64_t n = sizes[i];
        tm_tier t;
        open_tier(&t, n);
        fill(&t);
        int bad = 0;
        for (uint64_t f = 0; f < n && bad < 5; f++) {
            for (uint64_t h = 0; h <= n && bad < 5; h++) { /* h == n: the cursor */
                tm_tier_slot_free(&t, f);
                t.cursor = h == n ? (f * 7 + 3) % (n + 1) : 0;
                uint64_t s = tm_tier_slot_alloc(&t, h == n ? NOHINT : h);
                if (s != f) {
                    CHECKF(s == f, "%llu slots, only %llu free, hint %lld: got %lld", (unsigned long long)n,
                           (unsigned long long)f, h == n ? -1ll : (long long)h, (long long)s);
                    bad++;
                    if (s != NOHINT)
                        tm_tier_slot_free(&t, s);
                    tm_tier_slot_alloc(&t, f);
                }
            }
        }
        tm_tier_close(&t);
    }
}

/* ---- randomized: against a next-fit model ------------------------------ */

static void random_allocs_and_frees_match_a_next_fit_model(void)
{
    enum { N = 300, OPS = 20000 };
    static bool model[N];
    static uint64_t held[N];
    int nheld = 0;
    uint64_t cursor = 0;
    memset(model, 0, sizeof model);
    tm_tier t;
    open_tier(&t, N);
    check_rng_state = 77;
    int full = 0;
    for (int op = 0; op < OPS; op++) {
        if (nheld == 0 || check_below(100) < 52) {
            uint64_t hint = check_below(4) == 0 ? check_below(N + 20) : NOHINT;
            uint64_t from = hint < N ? hint : cursor, want = NOHINT;
            for (uint64_t k = 0; k < N; k++)
                if (!model[(from + k) % N]) {
                    want = (from + k) % N;
                    break;
                }
            uint64_t got = tm_tier_slot_alloc(&t, hint);
            if (got != want) {
                CHECKF(got == want, "op %d: alloc(hint %lld) with cursor %llu gave %lld, next fit is %lld", op,
                       (long long)hint, (unsigned long long)cursor, (long long)got, (long long)want);
                break;
            }
            if (got == NOHINT) {
                full++;
                continue;
            }
            model[got] = true;
            held[nheld++] = got;
            cursor = got + 1;
        } else {
            int i = (int)check_below((uint64_t)nheld);
            tm_tier_slot_free(&t, held[i]);
            model[held[i]] = false;
            held[i] = held[--nheld];
        }
        if (t.used != (uint64_t)nheld) {
            CHECKF(t.used == (uint64_t)nheld, "op %d: used %llu, model holds %d", op, (unsigned long long)t.used,
                   nheld);
            break;
        }
    }
    for (uint64_t s = 0; s < N; s++)
        if (slot_is_used(&t, s) != model[s]) {
            CHECKF(false, "slot %llu: map says %d, model %d", (unsigned long long)s, slot_is_used(&t, s), model[s]);
            break;
        }
    printf("      %d allocations found the map full\n", full);
    CHECK(full > 10);
    tm_tier_close(&t);
}

/* ---- TIEREDMEM_INJECT ------------------------------------------------------ */

static tm_tier pmem, nvme;
static char err[TM_ERRLEN];

static int parse(const char *spec)
{
    memset(&pmem, 0, sizeof pmem);
    memset(&nvme, 0, sizeof nvme);
    memset(err, 0, sizeof err);
    return tm_inject_parse(spec, &pmem, &nvme, err);
}

static bool inject_is(const tm_inject *in, int e, int short_io, uint64_t delay_ns, uint64_t skip)
{
    return in->err == e && in->short_io == short_io && in->delay_ns == delay_ns && in->skip == skip;
}

static bool untouched(const tm_inject *in)
{
    return inject_is(in, 0, 0, 0, 0);
}

#define CHECK_INJECT(in, want_err, want_short, want_delay, want_skip)                                      \
    CHECKF(inject_is(in, want_err, want_short, want_delay, want_skip), #in ": got err %d short %d delay_ns %llu skip %llu", (in)->err, \
           (in)->short_io, (unsigned long long)(in)->delay_ns, (unsigned long long)(in)->skip)

static void good_inject_specs_set_the_named_fields(void)
{
    CHECK_EQ(parse("nvme_write:delay300ms"), 0);
    CHECK_INJECT(&nvme.inject_write, 0, 0, 300000000ull, 0);
    CHECK(untouched(&nvme.inject_read) && untouched(&pmem.inject_read) && untouched(&pmem.inject_write));

    CHECK_EQ(parse("nvme_read:EIO@10"), 0);
    CHECK_INJECT(&nvme.inject_read, EIO, 0, 0, 10);
    CHECK(untouched(&nvme.inject_write) && untouched(&pmem.inject_read) && untouched(&pmem.inject_write));

    CHECK_EQ(parse("pmem_read:short"), 0);
    CHECK_INJECT(&pmem.inject_read, 0, 1, 0, 0);

    CHECK_EQ(parse("nvme_write:delay1ms@3"), 0);
    CHECK_INJECT(&nvme.inject_write, 0, 0, 1000000ull, 3);

    CHECK_EQ(parse("nvme_read:EIO@10,pmem_write:ENOSPC,nvme_write:delay200ms,pmem_read:short@0"), 0);
    CHECK_INJECT(&nvme.inject_read, EIO, 0, 0, 10);
    CHECK_INJECT(&pmem.inject_write, ENOSPC, 0, 0, 0);
    CHECK_INJECT(&nvme.inject_write, 0, 0, 200000000ull, 0);
    CHECK_INJECT(&pmem.inject_read, 0, 1, 0, 0);

    static const struct { const char *name; int e; } names[] = {
        {"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EFAULT", EFAULT}, {"ENOMEM", ENOMEM}, {"EROFS", EROFS},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char spec[64];
        snprintf(spec, sizeof spec, "pmem_write:%s", names[i].name);
        CHECKF(parse(spec) == 0 && pmem.inject_write.err == names[i].e, "%s: rc/err %d", spec, pmem.inject_write.err);
    }
    CHECK_EQ(parse(""), 0); /* nothing to inject */
    CHECK(untouched(&nvme.inject_read) && untouched(&nvme.inject_write));
}

static void bad_inject_specs_are_rejected_with_a_message(void)
{
    /* each spec, and the entry the message must point at */
    static const struct { const char *spec, *near; } bad[] = {
        {"nvme_write:delay300", "nvme_write:delay300"},  /* no unit */
        {"nvme_write:delay300s", "nvme_write:delay300s"}, /* not ms */
        {"nvme_write:delay300msx", "nvme_write:delay300msx"},
        {"nvme_write:delay3m", "nvme_write:delay3m"},
        {"nvme_write:delayms", "nvme_write:delayms"},
        {"nvme_write:delay", "nvme_write:delay"},
        {"nvme_write:delay-5ms", "nvme_write:delay-5ms"},
        {"nvme_write:delay 5ms", "nvme_write:delay 5ms"},
        {"nvme_write:delay300@2", "nvme_write:delay300@2"},
        {"nvme_read:EAGAIN", "nvme_read:EAGAIN"}, /* not an errno it knows */
        {"nvme_read:eio", "nvme_read:eio"},
        {"nvme_read:EIOX", "nvme_read:EIOX"},
        {"nvme_read:shorter", "nvme_read:shorter"},
        {"nvme_read:", "nvme_read:"},
        {"nvme_read", "nvme_read"},
        {"nvme_wrote:EIO", "nvme_wrote:EIO"},
        {"ssd_read:EIO", "ssd_read:EIO"},
        {"nvme_reads:EIO", "nvme_reads:EIO"},
        {"NVME_READ:EIO", "NVME_READ:EIO"},
        {"nvme_read:EIO@", "nvme_read:EIO@"},
        {"nvme_read:EIO@x", "nvme_read:EIO@x"},
        {"nvme_read:EIO@5x", "nvme_read:EIO@5x"},
        {"nvme_read:@5", "nvme_read:@5"},
        {"nvme_read:EIO,bogus", "bogus"},
        {"nvme_read:EIO,,pmem_read:EIO", ",pmem_read:EIO"},
        {",nvme_read:EIO", ",nvme_read:EIO"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse(bad[i].spec);
        char want[128];
        snprintf(want, sizeof want, "near '%s'", bad[i].near);
        CHECKF(rc == -EINVAL && strstr(err, "bad TIEREDMEM_INJECT entry") && strstr(err, want),
               "\"%s\": rc %d, message \"%s\"; want -EINVAL and a message with %s", bad[i].spec, rc, err, want);
    }
}

static void inject_numbers_that_do_not_fit_are_rejected(void)
{
    /* BUG (found by this check, not fixed here): delayNms and @N are read
     * with strtoull, whose result is used unchecked, so these are accepted
     * (rc 0) with another value than the one written:
     *   "nvme_write:delay18446744073710ms": N * 10^6 wraps past 2^64, so
     *     delay_ns is 448384 (0.45 ms), not 5.1 hours;
     *   "nvme_read:EIO@-1": strtoull takes the minus sign and negates, so
     *     skip is 2^64-1 and the injected error never comes.
     * Each should be rejected like any other bad entry (-EINVAL and the
     * message). (Numbers so large that strtoull saturates are left out:
     * the saturated value, a delay of centuries or a skip never reached,
     * is in effect what was asked for.) */
    static const char *const specs[] = {
        "nvme_write:delay18446744073710ms",
        "nvme_read:EIO@-1",
    };
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        int rc = parse(specs[i]);
        CHECKF(rc == -EINVAL && strstr(err, "bad TIEREDMEM_INJECT entry"),
               "\"%s\": rc %d; parsed as nvme_write delay_ns %llu, nvme_read skip %llu", specs[i], rc,
               (unsigned long long)nvme.inject_write.delay_ns, (unsigned long long)nvme.inject_read.skip);
    }
}

/* ---- slots kept for forked children (tm_tier_keep / tm_tier_let_go) ---- */

static void a_kept_slot_freed_by_its_block_stays_used_until_let_go(void)
{
    tm_tier t;
    open_tier(&t, 100);
    uint64_t s = tm_tier_slot_alloc(&t, NOHINT);
    CHECK_EQ(tm_tier_keep(&t, s), 0);
    CHECK_EQ(t.kept_slots, 1);
    tm_tier_slot_free(&t, s);
    CHECK(slot_is_used(&t, s) && t.used == 1);
    CHECK(tm_tier_slot_alloc(&t, s) != s); /* never handed out again meanwhile */
    CHECK_EQ(tm_tier_let_go(&t, s), 1);    /* that freed it */
    CHECK(!slot_is_used(&t, s));
    CHECK_EQ(t.kept_slots, 0);
    tm_tier_close(&t);
}

static void a_slot_kept_by_two_forks_is_freed_at_the_last_let_go(void)
{
    tm_tier t;
    open_tier(&t, 100);
    uint64_t s = tm_tier_slot_alloc(&t, NOHINT);
    tm_tier_keep(&t, s);
    tm_tier_keep(&t, s);
    tm_tier_slot_free(&t, s);
    CHECK_EQ(tm_tier_let_go(&t, s), 0);
    CHECK(slot_is_used(&t, s) && tm_tier_kept(&t, s));
    CHECK_EQ(tm_tier_let_go(&t, s), 1);
    CHECK(!slot_is_used(&t, s) && !tm_tier_kept(&t, s));
    tm_tier_close(&t);
}

static void letting_go_of_a_slot_its_block_still_holds_leaves_it_used(void)
{
    tm_tier t;
    open_tier(&t, 100);
    uint64_t s = tm_tier_slot_alloc(&t, NOHINT);
    tm_tier_keep(&t, s);
    CHECK_EQ(tm_tier_let_go(&t, s), 0);
    CHECK(slot_is_used(&t, s) && !tm_tier_kept(&t, s) && t.used == 1);
    tm_tier_slot_free(&t, s); /* an ordinary free again */
    CHECK(!slot_is_used(&t, s) && t.used == 0);
    tm_tier_close(&t);
}

static uint64_t discarded[16][2];
static int ndiscarded;

static void record_discard(tm_tier *t, uint64_t slot, uint64_t n)
{
    (void)t;
    discarded[ndiscarded][0] = slot;
    discarded[ndiscarded++][1] = n;
}

static void discard_punches_around_kept_slots(void)
{
    static const tm_tier_ops ops = {.discard = record_discard};
    tm_tier t;
    open_tier(&t, 100);
    t.ops = &ops;
    for (int i = 0; i < 10; i++)
        tm_tier_slot_alloc(&t, NOHINT);
    tm_tier_keep(&t, 3);
    tm_tier_keep(&t, 4);
    tm_tier_keep(&t, 9);
    ndiscarded = 0;
    tm_tier_discard(&t, 0, 10);
    CHECK_EQ(ndiscarded, 2);
    CHECK(discarded[0][0] == 0 && discarded[0][1] == 3);
    CHECK(discarded[1][0] == 5 && discarded[1][1] == 4);
    t.ops = NULL;
    tm_tier_close(&t);
}



static const struct check checks[] = {
    CHECK_ENTRY(init_slots_gives_an_empty_map),
    CHECK_ENTRY(next_fit_gives_adjacent_slots_to_sequential_allocations),
    CHECK_ENTRY(alloc_starts_at_the_hint_when_it_is_free),
    CHECK_ENTRY(hint_past_the_end_falls_back_to_the_cursor),
    CHECK_ENTRY(freed_slot_is_reused_after_the_cursor_wraps),
    CHECK_ENTRY(used_count_and_peak_follow_alloc_and_free),
    CHECK_ENTRY(full_map_returns_uint64_max),
    CHECK_ENTRY(the_one_free_slot_is_found_from_every_hint),
    CHECK_ENTRY(random_allocs_and_frees_match_a_next_fit_model),
    CHECK_ENTRY(good_inject_specs_set_the_named_fields),
    CHECK_ENTRY(bad_inject_specs_are_rejected_with_a_message),
    CHECK_ENTRY(inject_numbers_that_do_not_fit_are_rejected),
    CHECK_ENTRY(a_kept_slot_freed_by_its_block_stays_used_until_let_go),
    CHECK_ENTRY(a_slot_kept_by_two_forks_is_freed_at_the_last_let_go),
    CHECK_ENTRY(letting_go_of_a_slot_its_block_still_holds_leaves_it_used),
    CHECK_ENTRY(discard_punches_around_kept_slots),
};

int main(int argc, char **argv)
{
    return RUN_CHECKS(checks, argc, argv);
}
