/* check.h: the smallest test harness that reads well.
 *
 * A test file defines one function per behaviour, named for it, and lists
 * them in a table for run_checks(). Each check prints one line, "ok NAME" or
 * "FAIL NAME" followed by the failed conditions; the binary exits 1 if any
 * check failed. With an argument it runs only the check of that name. */
#ifndef TM_TEST_CHECK_H
#define TM_TEST_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int check_failures; /* failed conditions in the running check */

#define CHECK_REPORT_(cond_text, ...)                                  \
    do {                                                               \
        check_failures++;                                              \
        printf("    %s:%d: %s", __FILE__, __LINE__, cond_text);        \
        printf(__VA_ARGS__);                                           \
        printf("\n");                                                  \
    } while (0)

/* CHECK(cond): a condition that must hold. */
#define CHECK(cond)                                                    \
    do {                                                               \
        if (!(cond))                                                   \
            CHECK_REPORT_(#cond, "%s", "");                            \
    } while (0)

/* CHECKF(cond, fmt, ...): the same, saying more when it fails. */
#define CHECKF(cond, ...)                                              \
    do {                                                               \
        if (!(cond))                                                   \
            CHECK_REPORT_(#cond ": ", __VA_ARGS__);                    \
    } while (0)

/* CHECK_EQ(got, want) for integers: prints both when they differ. */
#define CHECK_EQ(got, want)                                            \
    do {                                                               \
        long long got_ = (long long)(got), want_ = (long long)(want);  \
        if (got_ != want_)                                             \
            CHECK_REPORT_(#got " == " #want,                           \
                          ": got %lld (0x%llx), want %lld (0x%llx)",   \
                          got_, (unsigned long long)got_, want_,       \
                          (unsigned long long)want_);                  \
    } while (0)

struct check {
    const char *name;
    void (*fn)(void);
};
#define CHECK_ENTRY(fn) {#fn, fn}

static int run_checks(const struct check *checks, size_t n, int argc, char **argv)
{
    int failed = 0, ran = 0;
    for (size_t i = 0; i < n; i++) {
        if (argc > 1 && strcmp(argv[1], checks[i].name) != 0)
            continue;
        ran++;
        check_failures = 0;
        checks[i].fn();
        /* The failed conditions were printed above this line. */
        printf("%-4s %s\n", check_failures ? "FAIL" : "ok", checks[i].name);
        fflush(stdout);
        failed += check_failures != 0;
    }
    if (ran == 0) {
        printf("no check named %s\n", argc > 1 ? argv[1] : "(none)");
        return 2;
    }
    printf("%d of %d checks failed\n", failed, ran);
    return failed ? 1 : 0;
}

#define RUN_CHECKS(table, argc, argv) run_checks(table, sizeof(table) / sizeof((table)[0]), argc, argv)

/* A fixed-seed generator (xorshift64*), so random checks are the same on
 * every libc. */
static uint64_t check_rng_state = 0x9E3779B97F4A7C15ull;
static inline uint64_t check_rand(void)
{
    uint64_t x = check_rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    check_rng_state = x;
    return x * 0x2545F4914F6CDD1Dull;
}
/* Uniform enough in [0, n), n > 0. */
static inline uint64_t check_below(uint64_t n)
{
    return check_rand() % n;
}

#endif
