"""A forked child that cannot be served its parent's pool memory gets a clear
error, never a bare SIGSEGV or a hang: its first access to memory that cannot
be served writes one line on stderr (tieredmem, the child, the address, the
pool, the reason) and exits with status tm.FORK_UNSERVED_EXIT, 71 (docs/fork.md). Its setup is made
to fail with TIEREDMEM_INJECT_FORK="STEP:ERRNO" (STEP uffd or thread), read
in the child at the fork; lower-tier reads with TIEREDMEM_INJECT."""
import concurrent.futures
import errno
import os
import re
import signal

import numpy as np
import pytest

import tieredmem as tm
from test_fork import FORK, MiB, fork_and_wait, spilled  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(60, method="thread")

UNSERVED = tm.FORK_UNSERVED_EXIT
LINE = re.compile(r"tieredmem: forked child (\d+): pool memory at (0x[0-9a-f]+) \(pool at (0x[0-9a-f]+)\) "
                  r"cannot be read: (.*); exiting with status " + str(UNSERVED) + r"\n")


def the_line(err):
    lines = LINE.findall(err)
    assert len(lines) == 1, err
    pid, addr, base, why = lines[0]
    return int(addr, 16), int(base, 16), why


def address_range(a):
    lo = a.__array_interface__["data"][0]
    return lo, lo + a.nbytes


@pytest.mark.parametrize("step,err", [("uffd", errno.EMFILE), ("thread", errno.EAGAIN)])
def test_child_whose_setup_failed_touching_a_spilled_array_exits_71_saying_where_and_why(
        spilled, monkeypatch, capfd, step, err):
    pool, a = spilled
    monkeypatch.setenv("TIEREDMEM_INJECT_FORK", f"{step}:{err}")
    assert fork_and_wait(lambda: os._exit(int(a[a.size // 2]) and 3)) == UNSERVED
    addr, base, why = the_line(capfd.readouterr().err)
    lo, hi = address_range(a)
    assert base <= lo <= addr < hi, (hex(base), hex(lo), hex(addr), hex(hi))
    assert "could not set up its view of the parent's pool" in why and os.strerror(err) in why, why


def test_child_whose_setup_failed_exits_0_if_it_never_touches_pool_memory(spilled, monkeypatch, capfd):
    monkeypatch.setenv("TIEREDMEM_INJECT_FORK", f"uffd:{errno.EMFILE}")

    def child():
        b = np.arange(4 * MiB, dtype=np.uint64)  # memory of its own, from the C library
        os._exit(0 if int(b.sum()) == b.size * (b.size - 1) // 2 else 3)

    assert fork_and_wait(child) == 0
    assert "tieredmem" not in capfd.readouterr().err


def test_child_whose_setup_failed_dies_of_a_sigsegv_outside_the_pool_as_before(spilled, monkeypatch, capfd):
    monkeypatch.setenv("TIEREDMEM_INJECT_FORK", f"uffd:{errno.EMFILE}")

    def child():
        import ctypes
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # where pytest's faulthandler, the previous handler, writes
        ctypes.string_at(0)  # a crash of its own, not tieredmem's

    assert fork_and_wait(child) == -signal.SIGSEGV
    assert "tieredmem" not in capfd.readouterr().err


def test_child_whose_setup_failed_gets_efault_from_a_system_call_on_pool_memory_and_the_reason(
        spilled, monkeypatch, tmp_path):
    pool, a = spilled
    monkeypatch.setenv("TIEREDMEM_INJECT_FORK", f"uffd:{errno.EMFILE}")

    def child():
        fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, memoryview(a).cast("B"))
        except OSError as e:
            os._exit(0 if e.errno == errno.EFAULT and "could not set up" in pool.last_error() else 3)
        os._exit(4)

    assert fork_and_wait(child) == 0


def test_grandchild_of_a_child_whose_setup_failed_is_served_itself(spilled, monkeypatch):
    pool, a = spilled
    monkeypatch.setenv("TIEREDMEM_INJECT_FORK", f"uffd:{errno.EMFILE}")

    def child():
        del os.environ["TIEREDMEM_INJECT_FORK"]
        ok = lambda: os._exit(0 if np.array_equal(a, np.arange(a.size, dtype=np.uint64)) else 3)
        os._exit(fork_and_wait(ok) or 0)

    assert fork_and_wait(child) == 0


def sum_of(bounds):
    lo, hi = bounds
    return int(SHARED[lo:hi].sum())


def test_process_pool_executor_whose_workers_cannot_be_served_raises_broken_process_pool(
        spilled, monkeypatch, capfd):
    """multiprocessing.Pool would wait forever instead: it replaces a dead
    worker and loses its task (CPython bpo-22393); docs/fork.md says so."""
    global SHARED
    pool, SHARED = spilled
    monkeypatch.setenv("TIEREDMEM_INJECT_FORK", f"thread:{errno.EAGAIN}")
    parts = [(i, i + SHARED.size // 4) for i in range(0, SHARED.size, SHARED.size // 4)]
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=FORK) as ex:
        with pytest.raises(concurrent.futures.process.BrokenProcessPool):
            list(ex.map(sum_of, parts, timeout=30))
    assert LINE.search(capfd.readouterr().err)


@pytest.fixture
def spilled_unreadable(make_pool, monkeypatch):
    """As `spilled`, with every NVMe read failing: the parent only writes."""
    monkeypatch.setenv("TIEREDMEM_INJECT", "nvme_read:EIO")
    pool = make_pool(dram="16MiB", nvme="512MiB")
    a = pool.empty(64 * MiB // 8, dtype=np.uint64)
    a[:] = np.arange(a.size, dtype=np.uint64)
    assert pool.placement(a)["nvme"] >= 32 * MiB
    return pool, a


def test_child_whose_slot_read_fails_exits_71_naming_the_io_error(spilled_unreadable, capfd):
    pool, a = spilled_unreadable
    assert fork_and_wait(lambda: os._exit(3 if int(a.sum()) else 4)) == UNSERVED
    addr, base, why = the_line(capfd.readouterr().err)
    lo, hi = address_range(a)
    assert lo <= addr < hi
    assert "nvme read" in why and os.strerror(errno.EIO) in why, why


def slot_file(nvme_dir):
    """The NVMe tier's file (unlinked), opened anew: without O_DIRECT."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(nvme_dir)):
                return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)
        except FileNotFoundError:
            pass  # the listing's own descriptor, closed by now
    raise AssertionError(f"no open file in {nvme_dir}")


def test_child_whose_slot_fails_its_checksum_exits_71_saying_so(spilled, nvme_dir, capfd):
    pool, a = spilled

    def child():
        out = slot_file(nvme_dir)
        os.pwrite(out, b"\xa5" * a.nbytes, 0)  # every slot the array has
        os._exit(3 if int(a.sum()) else 4)

    assert fork_and_wait(child) == UNSERVED
    addr, base, why = the_line(capfd.readouterr().err)
    assert "checksum" in why, why
