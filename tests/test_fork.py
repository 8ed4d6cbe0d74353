"""A forked child (multiprocessing's "fork" start method) shares the parent's
tier files but not its arena or fault handlers: pools are inert in it. The
child allocates from the C library, and nothing it does reaches the parent's
data."""
import multiprocessing as mp

import numpy as np
import pytest

import tieredmem as tm

pytestmark = pytest.mark.timeout(60, method="thread")


def child_allocates(q):
    b = np.ones(2**22)  # 32 MiB, above the threshold: would go to the pool
    q.put(float(b.sum()))


def child_frees_parents_array(holder):
    holder.clear()  # drops the parent's pool array in the child


@pytest.fixture
def installed(make_pool):
    pool = make_pool(dram="64MiB", nvme="1GiB")
    tm.install(pool)
    try:
        yield pool
    finally:
        tm.uninstall()


def run_child(target, *args):
    proc = mp.get_context("fork").Process(target=target, args=args)
    proc.start()
    proc.join(30)
    return proc.exitcode


def test_forked_child_allocates_arrays_from_the_c_library(installed):
    q = mp.get_context("fork").Queue()
    assert run_child(child_allocates, q) == 0
    assert q.get(timeout=5) == 2**22


def test_forked_child_freeing_a_pool_array_leaves_the_parents_data_intact(installed):
    a = np.arange(2**22, dtype=np.float64)
    assert installed.owns(a)
    holder = [a]
    assert run_child(child_frees_parents_array, holder) == 0
    assert installed.placement(a)["dram"] == a.nbytes
    assert np.array_equal(a, np.arange(2**22, dtype=np.float64))
    del a, holder
