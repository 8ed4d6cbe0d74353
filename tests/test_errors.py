"""What goes wrong and how it is reported: every case checks the exception
type and that its message names what the user has to fix.

Pools are small (8 MiB DRAM, 64 MiB NVMe in a per-test directory, see
conftest.py); every test deletes its arrays before its pool is closed.
"""
import errno
import gc
import os

import numpy as np
import pytest

import tieredmem as tm

KiB, MiB = 1 << 10, 1 << 20
SIZE_ARGS = ("dram", "pmem", "nvme", "block_size")


# ---- sizes --------------------------------------------------------------

@pytest.mark.parametrize("arg", SIZE_ARGS)
@pytest.mark.parametrize("bad", ["12 parsecs", "", "MiB", "-1MiB", "1.2.3GiB", "5 XB"])
def test_unparsable_size_string_raises_valueerror_naming_the_argument(pool, arg, bad):
    with pytest.raises(ValueError) as exc:
        pool(**{arg: bad})
    msg = str(exc.value)
    assert msg.startswith(f"{arg}:"), msg
    assert repr(bad) in msg


@pytest.mark.parametrize("arg", SIZE_ARGS)
def test_negative_size_raises_valueerror_naming_the_argument(pool, arg):
    with pytest.raises(ValueError) as exc:
        pool(**{arg: -4096})
    msg = str(exc.value)
    assert msg.startswith(f"{arg}:"), msg
    assert "negative" in msg
    assert "-4096" in msg


@pytest.mark.parametrize("arg", SIZE_ARGS)
@pytest.mark.parametrize("flag", [True, False])
def test_bool_size_raises_valueerror_naming_the_argument(pool, arg, flag):
    # bool is an int subclass; True must not silently mean one byte.
    with pytest.raises(ValueError) as exc:
        pool(**{arg: flag})
    msg = str(exc.value)
    assert msg.startswith(f"{arg}:"), msg
    assert repr(flag) in msg


def test_parse_size_names_the_argument_it_is_given():
    with pytest.raises(ValueError, match=r"^my_limit: .*'lots'"):
        tm.parse_size("lots", "my_limit")


@pytest.mark.parametrize("arg", SIZE_ARGS + ("threshold",))
@pytest.mark.parametrize("huge", [2**70, 2**64, "99999999999999999999GiB"])
def test_size_too_large_for_64_bits_raises_valueerror_naming_the_argument_and_the_limit(pool, arg, huge):
    with pytest.raises(ValueError) as exc:
        pool(**{arg: huge})
    msg = str(exc.value)
    assert msg.startswith(f"{arg}:"), msg
    assert "too large" in msg and "2**64-1" in msg, msg


def test_largest_64_bit_size_is_parsed():
    assert tm.parse_size(2**64 - 1, "dram") == 2**64 - 1


def test_resize_beyond_64_bits_raises_valueerror_naming_dram(pool):
    p = pool()
    with pytest.raises(ValueError, match=r"^dram: .*too large.*2\*\*64-1"):
        p.resize(2**70)


@pytest.mark.parametrize("sizes", [
    {"dram": 2**63, "nvme": 2**63},
    {"pmem": 2**63, "nvme": 2**63},
    {"dram": 2**64 - 1, "pmem": 2**64 - 1, "nvme": 2**64 - 1},
], ids=["dram+nvme", "pmem+nvme", "all at the limit"])
def test_tiers_summing_beyond_64_bits_raise_valueerror_or_memoryerror(pool, sizes):
    # Each fits a uint64; their sum does not, nor does it fit the engine's
    # block counts or memory: refused with a message, never an OverflowError.
    with pytest.raises((ValueError, MemoryError)) as exc:
        pool(**sizes)
    assert str(exc.value), exc.value


@pytest.mark.parametrize("bs", [65537, 3 * 4096, "48KiB", "100KB"])
def test_block_size_not_a_power_of_two_raises_valueerror(pool, bs):
    with pytest.raises(ValueError, match=r"^block_size: must be a power of two from 4KiB to 2MiB"):
        pool(block_size=bs)


@pytest.mark.parametrize("bs", [2048, "2KiB", 1, 0])
def test_block_size_below_4kib_raises_valueerror(pool, bs):
    with pytest.raises(ValueError, match=r"^block_size: must be a power of two from 4KiB to 2MiB"):
        pool(block_size=bs)


@pytest.mark.parametrize("bs", ["4MiB", 4 << 20, "1GiB"])
def test_block_size_above_2mib_raises_valueerror(pool, bs):
    with pytest.raises(ValueError, match=r"^block_size: must be a power of two from 4KiB to 2MiB"):
        pool(block_size=bs)


@pytest.mark.parametrize("bs", ["4KiB", "2MiB"])
def test_block_size_at_the_bounds_is_accepted(pool, bs):
    p = pool(block_size=bs)
    assert p.block_size == tm.parse_size(bs, "block_size")
    p.close()


@pytest.mark.parametrize("dram, bs", [("32KiB", "64KiB"), (0, "64KiB"), ("1MiB", "2MiB"), (4095, "4KiB")])
def test_dram_smaller_than_one_block_raises_valueerror(pool, dram, bs):
    with pytest.raises(ValueError) as exc:
        pool(dram=dram, block_size=bs)
    msg = str(exc.value)
    assert msg.startswith("dram: must hold at least one block"), msg
    assert str(tm.parse_size(bs, "block_size")) in msg


# ---- directories ----------------------------------------------------------

def test_missing_nvme_path_raises_filenotfounderror_naming_the_path(pool, tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(FileNotFoundError) as exc:
        pool(nvme_path=missing)
    assert exc.value.errno == errno.ENOENT
    assert str(missing) in str(exc.value)
    assert "nvme_path" in str(exc.value)


def test_nvme_path_that_is_a_file_raises_notadirectoryerror_naming_the_path(pool, tmp_path):
    f = tmp_path / "slots.bin"
    f.write_bytes(b"")
    with pytest.raises(NotADirectoryError) as exc:
        pool(nvme_path=f)
    assert exc.value.errno == errno.ENOTDIR
    assert str(f) in str(exc.value)
    assert "nvme_path" in str(exc.value)


def test_unwritable_nvme_path_raises_oserror_naming_the_path(pool):
    # /proc takes no regular files, even from root (chmod would not stop root).
    with pytest.raises(OSError) as exc:
        pool(nvme_path="/proc")
    msg = str(exc.value)
    assert "/proc" in msg
    assert "nvme_path" in msg


def test_missing_pmem_path_raises_filenotfounderror_naming_the_path(pool, tmp_path):
    missing = tmp_path / "no-pmem-here"
    with pytest.raises(FileNotFoundError) as exc:
        pool(pmem="8MiB", pmem_path=missing)
    assert str(missing) in str(exc.value)
    assert "pmem_path" in str(exc.value)


def test_failed_creation_leaves_no_file_in_nvme_path(pool, nvme_dir, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_FORCE_NO_UFFD", "1")
    with pytest.raises(PermissionError):
        pool()
    assert os.listdir(nvme_dir) == []


# ---- capacity -------------------------------------------------------------

def test_allocation_beyond_capacity_raises_memoryerror_mentioning_capacity(pool):
    p = pool()
    cap = p.stats()["capacity"]
    with pytest.raises(MemoryError) as exc:
        p.empty(cap + 1, dtype="uint8")
    msg = str(exc.value)
    assert "capacity" in msg
    assert str(cap) in msg


def test_allocation_far_beyond_capacity_raises_memoryerror(pool):
    p = pool()
    with pytest.raises(MemoryError, match="capacity"):
        p.empty((1 << 40) // 8)  # 1 TiB


def test_allocation_beyond_what_is_left_raises_memoryerror(pool):
    p = pool()
    cap = p.stats()["capacity"]
    a = p.empty(cap // 2, dtype="uint8")
    with pytest.raises(MemoryError, match="capacity"):
        p.empty(cap // 2 + p.block_size, dtype="uint8")
    del a


def test_allocation_of_exactly_the_capacity_succeeds(pool):
    p = pool()
    cap = p.stats()["capacity"]
    a = p.empty(cap, dtype="uint8")  # never touched: nothing is written
    assert p.stats()["allocated"] == cap
    del a


def test_pool_still_works_after_a_failed_allocation(pool):
    p = pool()
    with pytest.raises(MemoryError):
        p.empty(p.stats()["capacity"] + 1, dtype="uint8")
    a = p.empty(1000)
    a[:] = np.arange(1000)
    np.testing.assert_array_equal(a, np.arange(1000))
    assert p.stats()["allocated"] == p.block_size
    del a


def test_failed_allocation_does_not_keep_the_pool_alive_after_close(pool):
    p = pool()
    with pytest.raises(MemoryError):
        p.empty(p.stats()["capacity"] + 1, dtype="uint8")
    gc.collect()
    p.close()
    assert p._destroyed


# ---- userfaultfd denied -----------------------------------------------------

@pytest.mark.parametrize("remedy", [
    "vm.unprivileged_userfaultfd=1",
    "/dev/userfaultfd",
    "CAP_SYS_PTRACE",
])
def test_userfaultfd_denied_raises_permissionerror_naming_the_fix(pool, monkeypatch, remedy):
    monkeypatch.setenv("TIEREDMEM_FORCE_NO_UFFD", "1")
    with pytest.raises(PermissionError) as exc:
        pool()
    assert "userfaultfd" in str(exc.value)
    assert remedy in str(exc.value)


def test_userfaultfd_force_flag_zero_does_not_deny(pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_FORCE_NO_UFFD", "0")
    p = pool()
    assert not p.closed
    p.close()


def test_pool_can_be_created_once_the_denial_is_lifted(pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_FORCE_NO_UFFD", "1")
    with pytest.raises(PermissionError):
        pool()
    monkeypatch.delenv("TIEREDMEM_FORCE_NO_UFFD")
    p = pool()
    a = p.full(10, 1.0)
    assert a.sum() == 10.0
    del a
    p.close()


# ---- fault injection spec -----------------------------------------------------

@pytest.mark.parametrize("spec", [
    "bogus",
    "nvme_read",
    "nvme_read:",
    "nvme_read:EBOGUS",
    "nvme_read:EIO@",
    "nvme_read:EIO@x",
    "nvme_read:EIO@3x",
    "disk_read:EIO",
    "nvme_read:EIO,pmem_write",
])
def test_malformed_inject_spec_raises_valueerror_naming_the_variable(pool, monkeypatch, spec):
    monkeypatch.setenv("TIEREDMEM_INJECT", spec)
    with pytest.raises(ValueError, match="TIEREDMEM_INJECT"):
        pool()


@pytest.mark.parametrize("spec", ["nvme_read:EIO", "nvme_write:ENOSPC@5", "pmem_read:short,nvme_read:EIO@100"])
def test_well_formed_inject_spec_is_accepted(pool, monkeypatch, spec):
    monkeypatch.setenv("TIEREDMEM_INJECT", spec)
    p = pool()
    assert not p.closed
    p.close()
