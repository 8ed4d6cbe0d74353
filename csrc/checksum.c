/* checksum.c: checksums of blocks written to lower tiers, so that data
 * damaged on a tier is detected when it is read back instead of being
 * returned; and whether a block is all zero (a zeroed block's eviction). A block's checksum is the CRC-32C of the CRC-32Cs of its four
 * quarters: SSE4.2's crc32 instruction has a latency of 3 cycles and a
 * throughput of 1, so four independent streams run about three times as fast
 * as one (one stream: ~6 GB/s here, on the fault path of every block read
 * back). Elsewhere a table. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

static uint32_t table[256];

static void table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1; /* reflected Castagnoli */
        table[i] = c;
    }
}

static uint32_t crc_table(uint32_t crc, const uint8_t *p, size_t n)
{
    while (n--)
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t crc, const uint8_t *p, size_t n)
{
    uint64_t c = crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n; n--, p++)
        c32 = __builtin_ia32_crc32qi(c32, *p);
    return c32;
}

/* The CRCs (not inverted) of the four quarters of p, interleaved.
 * Precondition: q, the quarter's length, is a multiple of 8. */
__attribute__((target("sse4.2"))) static void quarters_sse42(const uint8_t *p, size_t q, uint32_t out[4])
{
    uint64_t c0 = ~0u, c1 = ~0u, c2 = ~0u, c3 = ~0u;
    for (size_t i = 0; i < q; i += 8) {
        uint64_t v0, v1, v2, v3;
        memcpy(&v0, p + i, 8);
        memcpy(&v1, p + q + i, 8);
        memcpy(&v2, p + 2 * q + i, 8);
        memcpy(&v3, p + 3 * q + i, 8);
        c0 = __builtin_ia32_crc32di(c0, v0);
        c1 = __builtin_ia32_crc32di(c1, v1);
        c2 = __builtin_ia32_crc32di(c2, v2);
        c3 = __builtin_ia32_crc32di(c3, v3);
    }
    out[0] = (uint32_t)c0;
    out[1] = (uint32_t)c1;
    out[2] = (uint32_t)c2;
    out[3] = (uint32_t)c3;
}
#endif

static void quarters_table(const uint8_t *p, size_t q, uint32_t out[4])
{
    for (int k = 0; k < 4; k++)
        out[k] = crc_table(~0u, p + k * q, q);
}

static uint32_t (*impl)(uint32_t, const uint8_t *, size_t);
static void (*quarters)(const uint8_t *, size_t, uint32_t[4]);

static void choose(void)
{
    table_init();
    impl = crc_table;
    quarters = quarters_table;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) {
        impl = crc_sse42;
        quarters = quarters_sse42;
    }
#endif
}

static pthread_once_t once = PTHREAD_ONCE_INIT;

uint32_t tm_crc32c(const void *data, size_t len)
{
    pthread_once(&once, choose);
    return ~impl(~0u, data, len);
}

int tm_all_zero(const void *data, size_t len)
{
    const uint64_t *w = data;
    uint64_t any = 0;
    for (size_t i = 0; i < len / 8; i++) /* no early exit: vectorized, it streams */
        any |= w[i];
    return any == 0;
}

uint32_t tm_block_checksum(const void *data, size_t len)
{
    pthread_once(&once, choose);
    if (len % 32)
        return tm_crc32c(data, len);
    uint32_t q[4];
    quarters(data, len / 4, q);
    for (int k = 0; k < 4; k++)
        q[k] = ~q[k];
    return tm_crc32c(q, sizeof q);
}
