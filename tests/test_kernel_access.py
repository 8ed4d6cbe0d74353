"""Kernel-mode access to pool memory that is not resident (never touched, or
demoted to NVMe) is served by the engine like a user access: system calls
that copy into or out of pool arrays (read, readv, preadv, recv, write) move
exactly the right bytes and never fail with EFAULT."""
import functools
import gc
import hashlib
import os
import socket
import threading

import numpy as np
import pytest

from patterns import CHUNK, MiB, digest, expected_digest, fill, first_mismatch, pattern, push_out


FILE_BYTES = 512 * MiB
SEED = 21

pytestmark = pytest.mark.timeout(120, method="thread")


# ---- helpers --------------------------------------------------------------

def read_fully(fd, mv, offset=None):
    """read/pread into mv until full (a read may return less than asked)."""
    got = 0
    while got < len(mv):
        if offset is None:
            n = os.readv(fd, [mv[got:]])
        else:
            n = os.preadv(fd, [mv[got:]], offset + got)
        assert n > 0, f"EOF after {got} of {len(mv)} bytes"
        got += n
    return got


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """A 512 MiB file holding pattern(SEED) as uint64, and its sha1."""
    path = tmp_path_factory.mktemp("kernel_access") / "data.bin"
    h = hashlib.sha1()
    n = FILE_BYTES // 8
    with open(path, "wb") as f:
        for i in range(0, n, 8 * CHUNK):
            p = pattern(i, min(i + 8 * CHUNK, n), SEED)
            f.write(p)
            h.update(p)
    yield path, h.hexdigest()
    path.unlink()


@pytest.fixture
def make_pool(make_pool):
    """Pools with room for the 512 MiB file."""
    return functools.partial(make_pool, nvme="2GiB")



# ---- kernel writes into pool memory ----------------------------------------

def test_readinto_512mib_file_into_array_demoted_to_nvme_is_exact(make_pool, data_file):
    path, want = data_file
    budget = 64 * MiB
    pool = make_pool(dram=budget)
    a = pool.empty(FILE_BYTES // 8, dtype=np.uint64)
    a[:] = 0xDEADBEEF  # stale contents the read must replace everywhere
    other = pool.zeros(2 * budget // 8, dtype=np.uint64)
    assert push_out(pool, a, other)["nvme"] == a.nbytes
    mv = memoryview(a).cast("B")
    got = 0
    with open(path, "rb", buffering=0) as f:
        while got < len(mv):
            n = f.readinto(mv[got:])
            assert n, f"EOF after {got} bytes"
            got += n
    assert got == FILE_BYTES
    assert pool.stats()["dram"]["peak"] <= budget + 2 * pool.block_size
    if digest(a) != want:
        pytest.fail(f"array differs from the file, {first_mismatch(a, SEED)}")
    del mv, a, other
    gc.collect()


def test_readv_into_never_touched_array_is_exact(make_pool, data_file):
    path, _ = data_file
    budget = 16 * MiB
    pool = make_pool(dram=budget)
    a = pool.empty(4 * budget // 8, dtype=np.uint64)  # never touched: unbacked
    assert pool.placement(a)["unbacked"] == a.nbytes
    fd = os.open(path, os.O_RDONLY)
    try:
        read_fully(fd, memoryview(a).cast("B"))
    finally:
        os.close(fd)
    assert digest(a) == expected_digest(a.nbytes, SEED), f"{first_mismatch(a, SEED)}"
    del a
    gc.collect()


def test_preadv_at_an_offset_into_array_on_nvme_is_exact(make_pool, data_file):
    path, _ = data_file
    budget = 16 * MiB
    pool = make_pool(dram=budget)
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    a[:] = 7
    other = pool.zeros(2 * budget // 8, dtype=np.uint64)
    assert push_out(pool, a, other)["nvme"] == a.nbytes
    offset = 3 * MiB
    fd = os.open(path, os.O_RDONLY)
    try:
        read_fully(fd, memoryview(a).cast("B"), offset=offset)
    finally:
        os.close(fd)
    first = offset // 8
    for i in range(0, a.size, CHUNK):
        want = pattern(first + i, first + min(i + CHUNK, a.size), SEED)
        assert np.array_equal(a[i:i + CHUNK], want), f"1 MiB chunk {i // CHUNK} differs from the file"
    del a, other
    gc.collect()


def socket_transfer(send, mv):
    """Run send(tx) on a thread while recv_into fills mv from the other end of
    a socketpair; return the bytes received. The sender must finish cleanly."""
    rx, tx = socket.socketpair()
    errors = []

    def run():
        try:
            send(tx)
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        finally:
            tx.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    got = 0
    rx.settimeout(60)
    while got < len(mv):
        n = rx.recv_into(mv[got:])
        if n == 0:
            break
        got += n
    t.join(60)
    rx.close()
    tx.close()
    assert not t.is_alive(), "sender did not finish"
    assert not errors, errors
    return got


def test_recv_into_array_from_socket_fills_it_exactly(make_pool):
    budget = 16 * MiB
    pool = make_pool(dram=budget)
    a = pool.empty(4 * budget // 8, dtype=np.uint64)

    def send(tx):
        for i in range(0, a.size, CHUNK):
            tx.sendall(pattern(i, min(i + CHUNK, a.size), SEED))

    mv = memoryview(a).cast("B")
    assert socket_transfer(send, mv) == a.nbytes
    assert digest(a) == expected_digest(a.nbytes, SEED), f"{first_mismatch(a, SEED)}"
    del mv, a
    gc.collect()


def test_socket_transfer_between_two_pool_arrays_on_nvme_is_exact(make_pool):
    """Both ends fault in the kernel: send reads demoted blocks while recv
    writes into fresh ones, under one budget."""
    budget = 16 * MiB
    pool = make_pool(dram=budget)
    src = pool.empty(3 * budget // 8, dtype=np.uint64)
    fill(src, SEED)
    dst = pool.empty(3 * budget // 8, dtype=np.uint64)
    other = pool.zeros(2 * budget // 8, dtype=np.uint64)
    assert push_out(pool, src, other)["nvme"] == src.nbytes
    mv = memoryview(dst).cast("B")
    assert socket_transfer(lambda tx: tx.sendall(memoryview(src).cast("B")), mv) == dst.nbytes
    assert digest(dst) == expected_digest(dst.nbytes, SEED), f"{first_mismatch(dst, SEED)}"
    del mv, src, dst, other
    gc.collect()


def test_kernel_write_into_a_clean_promoted_block_survives_demotion(make_pool, data_file):
    """A block promoted by a read is clean and write-protected; a write into
    it by the kernel (read(2)) must mark it dirty like a user write."""
    path, _ = data_file
    budget = 16 * MiB
    pool = make_pool(dram=budget)
    if not pool.stats()["dirty_tracking"]:
        pytest.skip("no write-protect dirty tracking on this kernel")
    a = pool.empty(2 * MiB // 8, dtype=np.uint64)
    a[:] = 5
    other = pool.zeros(2 * budget // 8, dtype=np.uint64)
    assert push_out(pool, a, other)["nvme"] == a.nbytes
    # Promoted clean by advice, and marked hot so that the background thread's
    # demotions ahead of need leave it in DRAM while the kernel writes.
    pool.advise(a, "hot")
    assert pool.placement(a)["dram"] == a.nbytes
    assert int(a.sum()) == 5 * a.size
    fd = os.open(path, os.O_RDONLY)
    try:
        read_fully(fd, memoryview(a).cast("B"))
        pool.advise(a, "normal")
    finally:
        os.close(fd)
    assert push_out(pool, a, other)["nvme"] == a.nbytes
    bad = first_mismatch(a, SEED)
    assert bad is None, f"bytes read(2) into a clean block were lost on demotion: {bad}"
    del a, other
    gc.collect()


def test_o_direct_read_into_array_on_nvme_is_exact(make_pool, data_file):
    """O_DIRECT: the kernel pins the pool pages (get_user_pages) and the
    device writes into them; the pages must be faulted in and kept."""
    path, _ = data_file
    budget = 16 * MiB
    pool = make_pool(dram=budget)
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    a[:] = 11
    other = pool.zeros(2 * budget // 8, dtype=np.uint64)
    assert push_out(pool, a, other)["nvme"] == a.nbytes
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as e:
        pytest.skip(f"O_DIRECT not supported for {path}: {e}")
    try:
        read_fully(fd, memoryview(a).cast("B"))
    finally:
        os.close(fd)
    bad = first_mismatch(a, SEED)
    assert bad is None, f"1 MiB chunk {bad} differs from the file"
    del a, other
    gc.collect()


# ---- kernel reads from pool memory -----------------------------------------

def test_os_write_from_array_on_nvme_writes_the_same_bytes(make_pool, tmp_path):
    budget = 16 * MiB
    pool = make_pool(dram=budget)
    a = pool.empty(4 * budget // 8, dtype=np.uint64)
    fill(a, SEED)
    other = pool.zeros(2 * budget // 8, dtype=np.uint64)
    assert push_out(pool, a, other)["nvme"] == a.nbytes
    out = tmp_path / "out.bin"
    mv = memoryview(a).cast("B")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        done = 0
        while done < len(mv):
            done += os.write(fd, mv[done:])
    finally:
        os.close(fd)
    del mv
    assert out.stat().st_size == a.nbytes
    h = hashlib.sha1()
    with open(out, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    assert h.hexdigest() == expected_digest(a.nbytes, SEED)
    del a, other
    gc.collect()
