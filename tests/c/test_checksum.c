/* test_checksum.c: CRC-32C and block checksums (csrc/checksum.c).
 *
 * Links checksum.c alone (and pthread, for its pthread_once). The engine
 * picks SSE4.2's crc32 instruction when the CPU has it and a table
 * otherwise; this binary tests whichever this machine gets, against known
 * vectors and against a bitwise reference written here from the definition
 * (reflected Castagnoli polynomial 0x82F63B78, initial and final XOR ~0). */
#include <stdbool.h>
#include <stdlib.h>

#include "check.h"
#include "internal.h"

static uint32_t reference_crc32c(const void *data, size_t len)
{
    const uint8_t *p = data;
    uint32_t c = ~0u;
    for (size_t i = 0; i < len; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
    }
    return ~c;
}

static void fill_random(uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)check_rand();
}

static void crc32c_of_known_vectors_matches(void)
{
    uint8_t buf[32];
    CHECK_EQ(tm_crc32c("", 0), 0);
    CHECK_EQ(tm_crc32c("a", 1), 0xC1D04330u);
    CHECK_EQ(tm_crc32c("123456789", 9), 0xE3069283u); /* the check value */
    CHECK_EQ(tm_crc32c("The quick brown fox jumps over the lazy dog", 43), 0x22620404u);
    /* RFC 3720 (iSCSI), B.4 */
    memset(buf, 0, sizeof buf);
    CHECK_EQ(tm_crc32c(buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, sizeof buf);
    CHECK_EQ(tm_crc32c(buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    CHECK_EQ(tm_crc32c(buf, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)(31 - i);
    CHECK_EQ(tm_crc32c(buf, 32), 0x113FDB5Cu);
    /* and the reference agrees with the same vectors */
    CHECK_EQ(reference_crc32c("123456789", 9), 0xE3069283u);
    CHECK_EQ(reference_crc32c(buf, 32), 0x113FDB5Cu);
}

static void crc32c_matches_the_reference_at_every_length_and_alignment(void)
{
    /* The SSE4.2 path reads 8 bytes at a time and finishes byte by byte:
     * every tail length, from unaligned addresses too. */
    static uint8_t buf[600];
    check_rng_state = 1;
    fill_random(buf, sizeof buf);
    int bad = 0;
    for (size_t off = 0; off < 16; off++)
        for (size_t len = 0; len + off <= sizeof buf && bad < 5; len++) {
            uint32_t got = tm_crc32c(buf + off, len), want = reference_crc32c(buf + off, len);
            if (got != want) {
                CHECKF(got == want, "offset %zu length %zu: got 0x%08x, want 0x%08x", off, len, got, want);
                bad++;
            }
        }
}

/* What the header promises for a length that is a multiple of 32. */
static uint32_t reference_block_checksum(const uint8_t *p, size_t len)
{
    uint32_t q[4];
    for (int k = 0; k < 4; k++)
        q[k] = reference_crc32c(p + k * (len / 4), len / 4);
    return reference_crc32c(q, sizeof q); /* the four as stored in memory */
}

static void block_checksum_is_the_crc_of_its_quarters_crcs(void)
{
    static uint8_t buf[65536];
    check_rng_state = 2;
    fill_random(buf, sizeof buf);
    static const size_t lens[] = {32, 64, 96, 4096, 4128, 65536};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        uint32_t got = tm_block_checksum(buf, lens[i]), want = reference_block_checksum(buf, lens[i]);
        CHECKF(got == want, "length %zu: got 0x%08x, want 0x%08x", lens[i], got, want);
    }
}

static void block_checksum_of_lengths_not_multiple_of_32(void)
{
    /* is the plain CRC-32C of the whole */
    static uint8_t buf[5000];
    check_rng_state = 3;
    fill_random(buf, sizeof buf);
    static const size_t lens[] = {1, 7, 8, 16, 31, 33, 40, 48, 100, 4095, 4097, 4100, 5000};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        uint32_t got = tm_block_checksum(buf, lens[i]), want = reference_crc32c(buf, lens[i]);
        CHECKF(got == want, "length %zu: got 0x%08x, want CRC-32C 0x%08x", lens[i], got, want);
    }
}

static void block_checksum_detects_a_flipped_bit(void)
{
    /* every single bit of a 4 KiB block (quartered) and of a 1000-byte
     * one (not quartered) */
    static const size_t lens[] = {4096, 1000};
    static uint8_t buf[4096];
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        size_t len = lens[i];
        check_rng_state = 4 + i;
        fill_random(buf, len);
        uint32_t good = tm_block_checksum(buf, len);
        size_t missed = 0, first = 0;
        for (size_t bit = 0; bit < len * 8; bit++) {
            buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            if (tm_block_checksum(buf, len) == good && missed++ == 0)
                first = bit;
            buf[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        }
        CHECKF(missed == 0, "length %zu: %zu of %zu flipped bits not detected, the first bit %zu", len, missed,
               len * 8, first);
        CHECK(tm_block_checksum(buf, len) == good); /* restored */
    }
}

static void block_checksum_depends_on_the_order_of_the_quarters(void)
{
    static uint8_t buf[4096], swapped[4096];
    check_rng_state = 9;
    fill_random(buf, sizeof buf);
    memcpy(swapped, buf + 1024, 1024);
    memcpy(swapped + 1024, buf, 1024);
    memcpy(swapped + 2048, buf + 2048, 2048);
    CHECK(tm_block_checksum(swapped, 4096) != tm_block_checksum(buf, 4096));
}

static const struct check checks[] = {
    CHECK_ENTRY(crc32c_of_known_vectors_matches),
    CHECK_ENTRY(crc32c_matches_the_reference_at_every_length_and_alignment),
    CHECK_ENTRY(block_checksum_is_the_crc_of_its_quarters_crcs),
    CHECK_ENTRY(block_checksum_of_lengths_not_multiple_of_32),
    CHECK_ENTRY(block_checksum_detects_a_flipped_bit),
    CHECK_ENTRY(block_checksum_depends_on_the_order_of_the_quarters),
};

int main(int argc, char **argv)
{
    return RUN_CHECKS(checks, argc, argv);
}
