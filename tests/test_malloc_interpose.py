"""The malloc interposer (csrc/preload/malloc_interpose.c, docs/malloc.md):
under `tieredmem run`, the C library's allocations of at least the threshold
are pool memory and smaller ones are glibc's; free, realloc and
malloc_usable_size decide by address, before the pool exists, while it
lives, after it is closed, across threads and in fork children.

Each test is a subprocess: either `tieredmem run` (the interposer attached to
the run's pool) or python with the library in LD_PRELOAD, where the script
attaches a pool of its own (to control when the pool exists). Scripts use
libc through ctypes (whose calls release the GIL) and print one JSON line.
"""
import subprocess
import sys
import textwrap

import pytest

import runner
from runner import env_for, preloaded, result

from tieredmem import malloc

pytestmark = [pytest.mark.timeout(120, method="thread"),
              pytest.mark.skipif(malloc.library_path() is None, reason="the interposer is not built")]

MiB = 1 << 20
TIMEOUT = 90

# Prepended to every script: libc through ctypes, and whether a pointer is pool memory.
PRELUDE = """
import ctypes, json, os, sys
from tieredmem._engine import ffi, lib
libc = ctypes.CDLL(None, use_errno=True)
for name, res, args in (("malloc", "p", "s"), ("calloc", "p", "ss"), ("realloc", "p", "ps"), ("free", None, "p"),
                        ("malloc_usable_size", "s", "p"), ("aligned_alloc", "p", "ss"), ("memalign", "p", "ss"),
                        ("valloc", "p", "s"), ("posix_memalign", "i", "Pss")):
    kinds = {"p": ctypes.c_void_p, "s": ctypes.c_size_t, "i": ctypes.c_int, "P": ctypes.POINTER(ctypes.c_void_p)}
    f = getattr(libc, name)
    f.restype = kinds[res] if res else None
    f.argtypes = [kinds[a] for a in args]
def in_pool(ptr):
    return lib.tm_pool_of(ffi.cast("void *", ptr)) != ffi.NULL
def fill(ptr, n, byte):
    ctypes.memset(ptr, byte, n)
def same(ptr, n, byte):
    return ctypes.string_at(ptr, n) == bytes([byte]) * n
MiB = 1 << 20
def cache():  # the interposer's cache of freed pool blocks (tm_interpose_cache_counts)
    out = (ctypes.c_uint64 * 6)()
    libc.tm_interpose_cache_counts(out)
    return dict(zip(("reused", "kept", "given_back", "blocks", "bytes", "limit"), out))
def live(pool):
    return lib.tm_live_allocations(pool._open_engine())
"""


def script(tmp_path, body, own_pool=False):
    path = tmp_path / "prog.py"
    path.write_text(PRELUDE + (OWN_POOL if own_pool else "") + textwrap.dedent(body))
    return path


def tmrun(tmp_path, path, *options, env=None):
    return runner.tmrun(tmp_path, path, "--threshold", "1MiB", *options, env=env)


# A pool of its own for `preloaded` scripts.
OWN_POOL = """
import tieredmem, tieredmem.malloc
def new_pool():
    pool = tieredmem.Pool(dram="32MiB", nvme="256MiB", nvme_path=os.environ["NVME"], threshold="1MiB")
    assert tieredmem.malloc.attach(pool)
    return pool
"""


def test_large_malloc_is_pool_memory_and_small_is_not(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        big, small = libc.malloc(4 * MiB), libc.malloc(MiB - 1)
        fill(big, 4 * MiB, 7)
        print(json.dumps({"big": in_pool(big), "small": in_pool(small), "kept": same(big, 4 * MiB, 7)}))
        libc.free(big); libc.free(small)
    """)))
    assert out == {"big": True, "small": False, "kept": True}


def test_large_calloc_reads_as_zero_also_after_reuse(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        a = libc.calloc(3, 2 * MiB)
        first = in_pool(a) and same(a, 6 * MiB, 0)
        fill(a, 6 * MiB, 0xff)
        libc.free(a)
        b = libc.calloc(6 * MiB, 1)
        print(json.dumps({"first": first, "again": in_pool(b) and same(b, 6 * MiB, 0)}))
    """)))
    assert out == {"first": True, "again": True}


def test_a_freed_block_is_reused_by_the_next_allocation_of_its_size_without_a_fault(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        import tieredmem
        pool = tieredmem.installed()
        a = libc.malloc(2 * MiB)
        fill(a, 2 * MiB, 1)
        libc.free(a)
        c0, z0 = cache(), pool.stats()["zero_fills"]
        b = libc.malloc(2 * MiB)
        fill(b, 2 * MiB, 2)
        c1, z1 = cache(), pool.stats()["zero_fills"]
        print(json.dumps({"same": a == b, "reused": c1["reused"] - c0["reused"], "zero_fills": z1 - z0,
                          "kept": c0["blocks"]}))
    """)))
    assert out == {"same": True, "reused": 1, "zero_fills": 0, "kept": 1}


def test_calloc_of_a_reused_block_reads_as_zero(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        a = libc.malloc(2 * MiB)
        fill(a, 2 * MiB, 0xff)
        libc.free(a)
        before = cache()["reused"]
        b = libc.calloc(2 * MiB, 1)
        print(json.dumps({"same": a == b, "reused": cache()["reused"] - before, "zero": same(b, 2 * MiB, 0)}))
    """)))
    assert out == {"same": True, "reused": 1, "zero": True}


def test_a_reused_larger_block_keeps_its_usable_size_and_reallocs_in_place(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        a = libc.malloc(MiB + MiB // 4)  # 20 blocks of 64 KiB
        libc.free(a)
        b = libc.malloc(MiB)  # 16 blocks: the kept 20 waste less than a quarter
        fill(b, MiB, 6)
        size = libc.malloc_usable_size(b)
        c = libc.realloc(b, MiB + MiB // 4)
        print(json.dumps({"same": a == b, "size": size, "in_place": c == b, "kept": same(c, MiB, 6)}))
    """), "--block-size", "64KiB"))
    assert out == {"same": True, "size": MiB + MiB // 4, "in_place": True, "kept": True}


def test_kept_blocks_are_bounded_by_an_eighth_of_the_dram_budget(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        import tieredmem
        pool = tieredmem.installed()
        c0, l0 = cache(), live(pool)
        ptrs = [libc.malloc(MiB) for _ in range(20)]
        for p in ptrs:
            fill(p, MiB, 1)
        for p in ptrs:
            libc.free(p)
        c1, l1 = cache(), live(pool)
        print(json.dumps({"limit": c1["limit"], "bytes": c1["bytes"], "blocks": c1["blocks"],
                          "given_back": c1["given_back"] - c0["given_back"],
                          "live_is_kept": l1 - l0 == c1["blocks"] - c0["blocks"]}))
    """)))
    assert out == {"limit": 8 * MiB, "bytes": 8 * MiB, "blocks": 8, "given_back": 12, "live_is_kept": True}


def test_kept_blocks_idle_for_a_second_are_given_back(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        import time
        a = libc.malloc(2 * MiB)
        libc.free(a)
        kept = cache()["blocks"]
        time.sleep(1.3)
        b = libc.malloc(4 * MiB)  # another size: it looks at the cache and gives the idle block back
        c = cache()
        print(json.dumps({"kept": kept, "after": c["blocks"], "given_back": c["given_back"], "other": a != b}))
    """)))
    assert out == {"kept": 1, "after": 0, "given_back": 1, "other": True}


def test_kept_blocks_can_be_turned_off(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        a = libc.malloc(2 * MiB)
        libc.free(a)
        print(json.dumps(cache()))
    """), env={"TIEREDMEM_MALLOC_KEEP": "0"}))
    assert (out["limit"], out["blocks"], out["kept"]) == (0, 0, 0)


def test_detach_gives_kept_blocks_back_to_the_pool(tmp_path):
    out = result(preloaded(tmp_path, script(tmp_path, own_pool=True, body="""
        pool = new_pool()
        before = live(pool)
        a = libc.malloc(4 * MiB)
        libc.free(a)
        res = {"kept": cache()["blocks"], "live_kept": live(pool) - before}
        tieredmem.malloc.detach(pool._open_engine())
        res.update(after=cache()["blocks"], live_after=live(pool) - before)
        pool.close()
        res["released"] = bool(lib.tm_pool_released(pool._p))
        print(json.dumps(res))
    """)))
    assert out == {"kept": 1, "live_kept": 1, "after": 0, "live_after": 0, "released": True}


def test_close_of_a_pool_with_kept_blocks_releases_its_engine(tmp_path):
    out = result(preloaded(tmp_path, script(tmp_path, own_pool=True, body="""
        pool = new_pool()
        libc.free(libc.malloc(4 * MiB))
        kept = cache()["blocks"]
        pool.close()
        print(json.dumps({"kept": kept, "after": cache()["blocks"], "released": bool(lib.tm_pool_released(pool._p))}))
    """)))
    assert out == {"kept": 1, "after": 0, "released": True}


def test_fork_child_does_not_reuse_or_keep_into_the_parents_cache(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        a, other = libc.malloc(2 * MiB), libc.malloc(2 * MiB)
        libc.free(a)  # kept by the parent
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            c0 = cache()
            b = libc.malloc(2 * MiB)  # the C library's: the child has no pool memory, kept or not
            libc.free(other)  # the child's copy given back, not kept
            c1 = cache()
            os.write(w, json.dumps({"b_pool": in_pool(b), "b_is_a": b == a, "reused": c1["reused"] - c0["reused"],
                                    "kept": c1["kept"] - c0["kept"]}).encode())
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        child = json.loads(os.read(r, 4096))
        c = libc.malloc(2 * MiB)  # the parent still reuses its kept block
        print(json.dumps({"status": status, "child": child, "parent_reuses": c == a}))
    """)))
    assert out == {"status": 0, "child": {"b_pool": False, "b_is_a": False, "reused": 0, "kept": 0},
                   "parent_reuses": True}


def test_realloc_up_across_the_threshold_keeps_the_content(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        a = libc.malloc(1000)
        fill(a, 1000, 5)
        b = libc.realloc(a, 8 * MiB)
        print(json.dumps({"pool": in_pool(b), "kept": same(b, 1000, 5)}))
    """)))
    assert out == {"pool": True, "kept": True}


def test_realloc_down_across_the_threshold_keeps_the_content(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        a = libc.malloc(8 * MiB)
        fill(a, 8 * MiB, 9)
        was = in_pool(a)
        b = libc.realloc(a, 4096)
        print(json.dumps({"was": was, "pool": in_pool(b), "kept": same(b, 4096, 9)}))
    """)))
    assert out == {"was": True, "pool": False, "kept": True}


def test_malloc_usable_size_of_a_pool_pointer_is_its_allocation_size(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        a = libc.malloc(MiB + 1)
        print(json.dumps({"size": libc.malloc_usable_size(a), "pool": in_pool(a)}))
    """), "--block-size", "64KiB"))
    assert out == {"size": MiB + 64 * 1024, "pool": True}


def test_aligned_requests_up_to_the_block_size_are_pool_memory_larger_ones_are_not(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        res = {}
        for align in (64, 4096, 65536, 4 * MiB):
            out = ctypes.c_void_p()
            rc = libc.posix_memalign(ctypes.byref(out), align, 2 * MiB)
            a = libc.aligned_alloc(align, 2 * MiB)
            m = libc.memalign(align, 2 * MiB)
            res[align] = [rc, in_pool(out.value), out.value % align, in_pool(a), a % align, in_pool(m), m % align]
        res["einval"] = libc.posix_memalign(ctypes.byref(ctypes.c_void_p()), 24, 2 * MiB)
        v = libc.valloc(2 * MiB)
        res["valloc"] = [in_pool(v), v % 4096]
        print(json.dumps(res))
    """), "--block-size", "64KiB"))
    for align in ("64", "4096", "65536"):
        assert out[align] == [0, True, 0, True, 0, True, 0], align
    assert out[str(4 * MiB)] == [0, False, 0, False, 0, False, 0]
    assert out["einval"] == 22  # EINVAL: not a power of two
    assert out["valloc"] == [True, 0]


def test_pointers_from_before_the_pool_are_freed_and_reallocated_by_the_c_library(tmp_path):
    out = result(preloaded(tmp_path, script(tmp_path, own_pool=True, body="""
        before = [libc.malloc(4 * MiB) for _ in range(3)]
        fill(before[1], 4 * MiB, 3)
        pool = new_pool()
        fresh = libc.malloc(4 * MiB)
        libc.free(before[0])
        moved = libc.realloc(before[1], 16 * MiB)  # a C library block grown into the pool
        res = {"before": in_pool(before[2]), "fresh": in_pool(fresh), "moved": in_pool(moved),
               "kept": same(moved, 4 * MiB, 3), "size": libc.malloc_usable_size(before[2]) >= 4 * MiB}
        libc.free(before[2]); libc.free(moved); libc.free(fresh)
        print(json.dumps(res))
    """)))
    assert out == {"before": False, "fresh": True, "moved": True, "kept": True, "size": True}


def test_pool_pointers_are_freed_after_the_pool_is_closed_and_the_last_releases_it(tmp_path):
    out = result(preloaded(tmp_path, script(tmp_path, own_pool=True, body="""
        pool = new_pool()
        a, b = libc.malloc(4 * MiB), libc.malloc(4 * MiB)
        fill(a, 4 * MiB, 1)
        pool.close()
        after = libc.malloc(4 * MiB)  # closed: the C library's
        res = {"after": in_pool(after), "a_kept": same(a, 4 * MiB, 1)}
        libc.free(a)
        del pool  # the owner lets go; b still holds the engine
        res["b_alive"] = in_pool(b)
        grown = libc.realloc(b, 8 * MiB)  # out of the closed pool, into the C library
        res["grown"] = in_pool(grown)
        res["released"] = not in_pool(b)
        libc.free(grown); libc.free(after)
        print(json.dumps(res))
    """)))
    assert out == {"after": False, "a_kept": True, "b_alive": True, "grown": False, "released": True}


def test_threads_allocate_and_free_concurrently(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        import random, threading
        errors = []
        def work(seed):
            rng = random.Random(seed)
            for i in range(150):
                n = rng.choice((100, 64 * 1024, MiB - 1, MiB, 3 * MiB))
                p = libc.malloc(n)
                fill(p, n, seed)
                p = libc.realloc(p, rng.choice((50, 2 * MiB)))
                if ctypes.string_at(p, 1) != bytes([seed]):
                    errors.append((seed, i))
                libc.free(p)
        threads = [threading.Thread(target=work, args=(s,)) for s in range(1, 5)]
        for t in threads: t.start()
        for t in threads: t.join()
        import tieredmem.malloc
        print(json.dumps({"errors": errors, "served": tieredmem.malloc.counts()["allocations"] > 100}))
    """)))
    assert out == {"errors": [], "served": True}


def test_fork_child_reads_reallocs_and_frees_a_parent_pool_pointer_and_mallocs_its_own(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        parent = libc.malloc(4 * MiB)
        fill(parent, 4 * MiB, 2)
        other = libc.malloc(4 * MiB)
        fill(other, 4 * MiB, 3)
        pid = os.fork()
        if pid == 0:
            ok = same(parent, 4 * MiB, 2) and libc.malloc_usable_size(parent) >= 4 * MiB
            fill(parent, 4 * MiB, 5)  # the child's copy
            libc.free(parent)  # gives the child's copy back
            moved = libc.realloc(other, 8 * MiB)  # to the C library: the child has no pool memory
            ok = ok and not in_pool(moved) and same(moved, 4 * MiB, 3)
            q = libc.malloc(8 * MiB)
            fill(q, 8 * MiB, 4)
            ok = ok and not in_pool(q) and same(q, 8 * MiB, 4)
            libc.free(libc.realloc(q, 16 * MiB))
            libc.free(moved)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"child": status, "parent_kept": same(parent, 4 * MiB, 2) and same(other, 4 * MiB, 3),
                          "pool": in_pool(parent)}))
    """)))
    assert out == {"child": 0, "parent_kept": True, "pool": True}


CHECK_OFF = """
import tieredmem.malloc
big = libc.malloc(4 * MiB)
print(json.dumps({"loaded": tieredmem.malloc.loaded(), "pool": in_pool(big)}))
"""


def test_no_malloc_option_leaves_malloc_to_the_c_library(tmp_path):
    assert result(tmrun(tmp_path, script(tmp_path, CHECK_OFF), "--no-malloc")) == {"loaded": False, "pool": False}


def test_tieredmem_malloc_0_leaves_malloc_to_the_c_library(tmp_path):
    res = tmrun(tmp_path, script(tmp_path, CHECK_OFF), env={"TIEREDMEM_MALLOC": "0"})
    assert result(res) == {"loaded": False, "pool": False}


def test_program_and_its_children_see_the_environment_they_would_directly(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        import subprocess, tieredmem.malloc
        child = subprocess.run([sys.executable, "-c", "import os, json, tieredmem.malloc; "
                                "print(json.dumps([os.environ.get('LD_PRELOAD'), tieredmem.malloc.loaded()]))"],
                               capture_output=True, text=True, check=True)
        marks = sorted(k for k in os.environ if k.startswith("TIEREDMEM_"))
        print(json.dumps({"loaded": tieredmem.malloc.loaded(), "env": os.environ.get("LD_PRELOAD"),
                          "marks": marks, "child": json.loads(child.stdout)}))
    """), env={"LD_PRELOAD": ""}))
    assert out == {"loaded": True, "env": "", "marks": [], "child": ["", False]}


def test_an_interposer_the_loader_did_not_preload_is_said_once_and_run_goes_on(tmp_path):
    # As if re-executed and the dynamic loader had refused the library.
    res = tmrun(tmp_path, script(tmp_path, CHECK_OFF), env={"TIEREDMEM_REEXEC_PRELOAD_WAS": ""})
    assert result(res) == {"loaded": False, "pool": False}
    assert res.stderr.count("malloc interposer is off") == 1


def test_engine_keeps_its_own_allocations_out_of_the_pool_at_a_small_threshold(tmp_path):
    # At 64 KiB, the engine's metadata, slot maps and its threads' allocations
    # would be pool memory unless they are kept out: a second pool made and
    # used under run, and the run's pool spilling to NVMe, must not hang.
    out = result(tmrun(tmp_path, script(tmp_path, """
        import numpy as np, tieredmem
        other = tieredmem.Pool(dram="8MiB", nvme="4GiB", nvme_path=os.environ["NVME"])
        x = other.zeros(4 << 20); x += 1
        rows = [bytes(100_000) for _ in range(300)]  # Python objects of 100 KB: pool memory
        a = np.ones(48 << 20 >> 3)
        print(json.dumps({"sum": float(a.sum() + x.sum()), "rows": len(rows)}))
    """), "--threshold", "64KiB", "--dram", "16MiB", env={"NVME": str(tmp_path / "nvme")}))
    assert out == {"sum": float((48 << 20 >> 3) + (4 << 20)), "rows": 300}


PANDAS_KEYS = """
import numpy as np, pandas as pd, hashlib, tieredmem.malloc
rng = np.random.default_rng(0)
keys = rng.integers(0, 1 << 40, 2_000_000)
before = tieredmem.malloc.counts()
codes, uniques = pd.factorize(keys)
sums = pd.DataFrame({"k": keys % 500_000, "v": np.arange(keys.size)}).groupby("k")["v"].sum()
after = tieredmem.malloc.counts()
digest = hashlib.sha256(codes.tobytes() + uniques.tobytes() + sums.to_numpy().tobytes()).hexdigest()
print(json.dumps({"digest": digest, "allocations": after["allocations"] - before["allocations"],
                  "bytes": after["bytes"] - before["bytes"]}))
"""


def test_pandas_hash_tables_go_to_the_pool_with_the_same_result(tmp_path):
    pytest.importorskip("pandas")
    path = script(tmp_path, PANDAS_KEYS)
    plain = result(subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env_for(tmp_path),
                                  capture_output=True, text=True, timeout=TIMEOUT))
    under = result(tmrun(tmp_path, path, "--dram", "256MiB"))
    assert under["digest"] == plain["digest"]
    # khash tables for 2 M keys: tens of MiB of C library memory in the pool.
    assert under["allocations"] >= 2 and under["bytes"] >= 16 * MiB, under


def test_numpy_stable_argsort_scratch_goes_to_the_pool(tmp_path):
    out = result(tmrun(tmp_path, script(tmp_path, """
        import numpy as np, tieredmem.malloc
        a = np.random.default_rng(1).random(4_000_000)
        before = tieredmem.malloc.counts()
        order = np.argsort(a, kind="stable")
        after = tieredmem.malloc.counts()
        print(json.dumps({"sorted": bool((np.diff(a[order]) >= 0).all()),
                          "scratch": after["bytes"] - before["bytes"]}))
    """)))
    assert out["sorted"] and out["scratch"] >= 8 * MiB, out  # timsort's buffer: half the indices or more


def test_outside_pool_figure_rises_by_a_plain_bytearray(tmp_path):
    out = result(subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json, os, tieredmem
        pool = tieredmem.Pool(dram="128MiB", nvme="256MiB", nvme_path=os.environ["NVME"])
        a = pool.zeros(64 << 20 >> 3); a += 1  # 64 MiB resident in the pool
        s0 = pool.stats()
        b = bytearray(100 << 20)  # malloc'd and zero-filled: resident outside the pool
        s1 = pool.stats()
        print(json.dumps({"rise": s1["outside_pool"] - s0["outside_pool"], "pool": s0["dram"]["used"],
                          "held": s0["spare"] + s0["zero_ready"], "rss": s0["rss"], "outside": s0["outside_pool"]}))
    """)], env=env_for(tmp_path, {"NVME": str(tmp_path)}), capture_output=True, text=True, timeout=TIMEOUT))
    assert 95 * MiB <= out["rise"] <= 110 * MiB, out
    assert out["pool"] >= 64 * MiB and out["outside"] == out["rss"] - out["pool"] - out["held"]
