"""pymalloc's arenas in the pool (csrc/preload/malloc_interpose.c, "pymalloc's
arenas"; docs/malloc.md): under `tieredmem run` the interposer is CPython's
arena allocator, so Python's small objects (str, int, tuple, ...) are pool
memory, bounded by the DRAM budget, with their values intact through the
lower tiers; arenas from before, from a fork child and from a full or closed
pool are the previous allocator's and are freed by it; --no-pymalloc,
TIEREDMEM_PYMALLOC=0 and --no-malloc leave them alone.

Each test is a subprocess, as in tests/test_malloc_interpose.py: either
`tieredmem run` or python with the library in LD_PRELOAD attaching a pool of
its own. Scripts print one JSON line."""
import hashlib
import json
import sys
import textwrap

import pytest

import runner
from runner import preloaded, result

from tieredmem import malloc

pytestmark = [pytest.mark.timeout(150, method="thread"),
              pytest.mark.skipif(malloc.library_path() is None, reason="the interposer is not built"),
              pytest.mark.skipif(sys.implementation.name != "cpython", reason="pymalloc is CPython's")]

MiB = 1 << 20

PRELUDE = """
import ctypes, hashlib, json, os, sys
import tieredmem.malloc
from tieredmem._engine import ffi, lib
MiB = 1 << 20
def in_pool(obj):
    return lib.tm_pool_of(ffi.cast("void *", id(obj))) != ffi.NULL
def arenas():
    return tieredmem.malloc.arena_counts()
def make(n, tag=""):  # n small str objects, each its own (~70 bytes)
    return [f"{tag}{i:07d}-" + "x" * (i % 13) for i in range(n)]
def digest(xs):
    h = hashlib.sha256()
    for x in xs:
        h.update(x.encode())
    return h.hexdigest()
def share_in_pool(xs, step=997):
    sample = xs[::step]
    return sum(map(in_pool, sample)) / len(sample)
def hwm():  # the peak RSS of this program's memory (VmHWM: ru_maxrss would include the RSS of the
    # process that forked it, which exec records: late in a test run pytest's own 600 MiB)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
"""


def expected_digest(n, tag=""):
    h = hashlib.sha256()
    for i in range(n):
        h.update((f"{tag}{i:07d}-" + "x" * (i % 13)).encode())
    return h.hexdigest()


def script(tmp_path, body):
    path = tmp_path / "prog.py"
    path.write_text(PRELUDE + textwrap.dedent(body))
    return path


def tmrun(tmp_path, path, *options, env=None, dram="64MiB", nvme="2GiB", floor="0"):
    """`run` the script; with no floor by default, so that every arena made is
    the pool's (the floor has tests of its own)."""
    floor_option = ["--pymalloc-floor", floor] if floor is not None else []
    return runner.tmrun(tmp_path, path, *floor_option, *options, env=env, dram=dram, nvme=nvme)


N = 2_500_000  # ~190 MiB of str objects: three times the 64 MiB budget
MAKE_AND_CHECK = f"""
xs = make({N})
made = hwm()  # before digest() reads them back
print(json.dumps({{"arenas": arenas(), "share": share_in_pool(xs), "hwm": made, "digest": digest(xs)}}))
"""


def test_small_objects_under_run_are_pool_memory_with_their_values(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, MAKE_AND_CHECK)))
    a = out["arenas"]
    assert a["installed"] and out["share"] > 0.99, out
    assert a["pool_bytes"] >= 150 * MiB, a  # the strings' arenas, spilled to NVMe and read back by digest()
    assert out["digest"] == expected_digest(N)


def test_the_first_64_mib_of_arenas_stay_outside_the_pool_by_default(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, MAKE_AND_CHECK), floor=None))
    a = out["arenas"]
    # The interpreter's own arenas count towards the floor too: at most 64 MiB
    # of the strings' ~190 stay outside, the rest is the pool's.
    assert a["other"] * MiB >= 64 * MiB and a["pool_bytes"] >= (150 - 64) * MiB, a
    assert out["digest"] == expected_digest(N)


def test_a_pymalloc_floor_that_is_not_a_size_is_refused_by_name(tmp_path):
    res = tmrun(tmp_path, script(tmp_path, MAKE_AND_CHECK), floor="lots")
    assert res.returncode == 2 and "--pymalloc-floor" in res.stderr, res.stderr[-2000:]


def test_the_peak_rss_stays_near_the_budget_with_arenas_and_not_without(tmp_path):
    stats = tmp_path / "stats.json"
    with_arenas = result(tmrun(tmp_path, script(tmp_path, MAKE_AND_CHECK), "--stats", str(stats)))
    s = json.loads(stats.read_text())
    engine = {k: s[k] for k in ("budget_overruns", "writeback_waits", "demotions", "elapsed_s", "outside_pool")}
    without = result(tmrun(tmp_path, script(tmp_path, MAKE_AND_CHECK), "--no-pymalloc"))
    print(f"peak RSS with arenas in the pool {with_arenas['hwm'] / MiB:.0f} MiB, "
          f"without {without['hwm'] / MiB:.0f} MiB (64 MiB of DRAM); {engine}")
    assert not without["arenas"]["installed"] and without["share"] == 0
    assert with_arenas["digest"] == without["digest"] == expected_digest(N)
    # Measured: 101-103 MiB with the arenas in the pool (the interpreter under run: 42 MiB), 241-252
    # MiB without (the strings' arenas: 168 MiB). Runs inside the suite once showed 107-178 MiB:
    # that was ru_maxrss, which counted the forking pytest process's RSS (hwm() reads VmHWM now).
    assert with_arenas["hwm"] <= 64 * MiB + 64 * MiB, (with_arenas["hwm"] / MiB, engine)
    assert without["hwm"] - with_arenas["hwm"] >= 60 * MiB, (without["hwm"] / MiB, with_arenas["hwm"] / MiB, engine)


def test_the_summary_and_stats_file_count_the_arenas(tmp_path):
    res = tmrun(tmp_path, script(tmp_path, "xs = make(300_000)\nprint('{}')"), "--stats", str(tmp_path / "s.json"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "arenas in the pool" in res.stderr, res.stderr
    stats = json.loads((tmp_path / "s.json").read_text())["pymalloc"]
    assert stats["installed"] and stats["pool"] >= 15 and stats["pool_bytes"] >= 15 * MiB, stats


@pytest.mark.parametrize("how", ["--no-pymalloc", "TIEREDMEM_PYMALLOC=0", "--no-malloc"])
def test_arenas_can_be_left_out_of_the_pool(tmp_path, how):
    option, env = ((), {how.split("=")[0]: "0"}) if "=" in how else ((how,), None)
    out = result(tmrun(tmp_path, script(tmp_path, """
        xs = make(300_000)
        print(json.dumps({"installed": arenas()["installed"], "share": share_in_pool(xs), "ok": digest(xs)}))
    """), *option, env=env))
    assert out == {"installed": False, "share": 0, "ok": expected_digest(300_000)}


def test_a_full_pool_leaves_arenas_to_the_previous_allocator(tmp_path):
    # Capacity ~48 MiB less the headroom; the strings take ~190 MiB: no MemoryError, the rest outside.
    out = result(tmrun(tmp_path, script(tmp_path, MAKE_AND_CHECK), dram="16MiB", nvme="32MiB"))
    a = out["arenas"]
    assert 0.05 < out["share"] < 0.5, out
    assert 16 * MiB <= a["pool_bytes"] <= 48 * MiB and a["other"] >= 100, a
    assert out["digest"] == expected_digest(N)


def test_fork_child_reads_writes_and_frees_the_parents_objects_and_makes_its_own_outside(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, f"""
        xs = make({N})
        before = arenas()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            res = {{"read": digest(xs)}}
            upper = [s.upper() for s in xs[::2]]  # the parent's arenas are full: new arenas, the C library's
            res["own_in_pool"] = share_in_pool(upper)
            xs[::2] = upper  # its copy of the parent's list and objects
            res["wrote"] = digest(xs)
            a = arenas()
            res["own_arenas_in_pool"] = a["pool"] - before["pool"]
            res["own_arenas_outside"] = a["other"] - before["other"]
            del xs, upper  # frees the parent's arenas in the child: the child's copies go
            res["freed_in_child"] = arenas()["pool_freed"] - before["pool_freed"]
            os.write(w, json.dumps(res).encode())
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        child = json.loads(os.read(r, 1 << 16))
        print(json.dumps({{"status": status, "child": child, "parent": digest(xs), "share": share_in_pool(xs)}}))
    """)))
    c = out["child"]
    assert out["status"] == 0 and out["share"] > 0.99, out
    assert c["read"] == out["parent"] == expected_digest(N), out
    assert c["wrote"] != c["read"] and c["own_in_pool"] < 0.05 and c["own_arenas_in_pool"] == 0, c
    assert c["own_arenas_outside"] >= 50, c  # ~90 MiB of upper-case copies
    assert c["freed_in_child"] >= 100, c


def test_fork_workers_of_a_process_pool_read_the_parents_objects(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        xs = make(1_000_000)
        def part(i):
            return digest(xs[i::4])
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
            got = list(ex.map(part, range(4)))
        print(json.dumps({"same": got == [digest(xs[i::4]) for i in range(4)], "share": share_in_pool(xs)}))
    """)))
    assert out == {"same": True, "share": out["share"]} and out["share"] > 0.99, out


def test_arenas_from_before_go_back_to_their_allocator_and_pool_arenas_outlive_a_close(tmp_path):
    out = result(preloaded(tmp_path, script(tmp_path, """
        import gc
        old = make(400_000, "o")  # before any pool: the previous allocator's arenas
        pool = tieredmem.Pool(dram="32MiB", nvme="512MiB", nvme_path=os.environ["NVME"])
        assert tieredmem.malloc.attach(pool, arenas=True, arena_floor=0)
        res = {"old_share": share_in_pool(old)}
        del old
        gc.collect()
        a = arenas()
        res["old_freed_by_theirs"] = a["other_freed"] >= 20
        xs = make(400_000, "n")
        res["new_share"] = share_in_pool(xs)
        pool.close()  # detached: new arenas are the previous allocator's again, xs's stay valid
        ys = make(400_000, "y")
        res["after_close_share"] = share_in_pool(ys)
        res["xs"] = digest(xs)
        del pool
        res["alive"] = arenas()["pool_bytes"] > 0 and share_in_pool(xs) == res["new_share"]
        del xs  # frees the arenas into the closed engine
        gc.collect()
        res["pool_bytes_left"] = arenas()["pool_bytes"]
        res["ys"] = digest(ys)
        print(json.dumps(res))
    """)))
    # The new objects fill the free room left in the previous allocator's surviving arenas first,
    # and after the close the room left in pool arenas (still valid): a few percent each way.
    assert out["old_share"] == 0 and out["old_freed_by_theirs"] and out["new_share"] > 0.8, out
    assert out["after_close_share"] < 0.2 and out["alive"], out
    assert out["xs"] == expected_digest(400_000, "n") and out["ys"] == expected_digest(400_000, "y")
    # What is left: arenas that still hold an object made while attached (a few at most).
    assert out["pool_bytes_left"] <= 8 * MiB, out


def test_attach_without_arenas_leaves_them_alone(tmp_path):
    out = result(preloaded(tmp_path, script(tmp_path, """
        pool = tieredmem.Pool(dram="32MiB", nvme="512MiB", nvme_path=os.environ["NVME"])
        assert tieredmem.malloc.attach(pool)
        xs = make(300_000)
        print(json.dumps({"installed": arenas()["installed"], "share": share_in_pool(xs)}))
    """)))
    assert out == {"installed": False, "share": 0}


def test_threads_make_and_free_objects_beside_numpy_and_large_mallocs(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        import threading
        import numpy as np
        errors = []
        def work(seed):
            for i in range(6):
                xs = make(150_000, f"{seed}.{i}.")
                a = np.full(300_000, seed, dtype=np.int64)  # 2.3 MiB: numpy's handler
                b = bytearray(3 * MiB)  # a large malloc
                if digest(xs) != digest(make(150_000, f"{seed}.{i}.")) or a.sum() != seed * 300_000 or len(b) != 3 * MiB:
                    errors.append((seed, i))
                del xs
        threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        a = arenas()
        print(json.dumps({"errors": errors, "served": a["pool"] >= 50, "freed": a["pool_freed"] >= 25}))
    """)))
    assert out == {"errors": [], "served": True, "freed": True}
