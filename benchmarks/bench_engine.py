"""Engine benchmark: tieredmem against plain numpy and against the raw disk.

Scenarios, each measured side by side in one run with interleaved repetitions:

* in_budget: fill then sum an array that fits the DRAM budget, plain numpy vs
  an array from a tieredmem pool (the cost of the engine when nothing spills).
* seq_read_nvme (issue 11's targets): summing arrays 4x the DRAM budget, whose
  blocks the fill demoted, against the disk's ceiling (several large O_DIRECT
  reads in flight) and against numpy.memmap under the same memory limit: one
  array right after the fill and in the pass after, the same with a PMEM tier as
  big as DRAM, and two threads each summing its own array. Beside the times, the
  engine's counters per pass (bytes read and written, faults, readahead), which
  do not vary with the disk's noise, against the optimum.

Run from the repo root:  python -m benchmarks.bench_engine [--quick] [--out DIR]
Every figure printed is measured in the run; results go to DIR/engine.json
(with every raw timing) and DIR/engine.md.
"""

import argparse
import ctypes
import functools
import gc
import mmap
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks import common as c

FULL = {"reps": 5, "budget": 1 * c.GiB, "seq_dram": 512 * c.MiB}
QUICK = {"reps": 3, "budget": 256 * c.MiB, "seq_dram": 128 * c.MiB}

IN_BUDGET_FRACTION = 0.5  # the array takes this share of the DRAM budget
IN_BUDGET_TARGET = ("<=", 1.3)  # tieredmem/numpy fill+sum time
# Issue 11: a sequential sum at least 0.9 of the disk's ceiling and 1.0x numpy.memmap
# under the same memory limit; with PMEM as big as DRAM, no slower than without it.
CEILING_TARGET = (">=", 0.9)  # tieredmem sum GB/s / the ceiling's
MEMMAP_TARGET = (">=", 1.0)  # tieredmem sum GB/s / numpy.memmap's
PMEM_TARGET = (">=", 1.0)  # with PMEM / without
TWO_THREADS = "tieredmem 2 threads"
# The tieredmem systems, each with the baselines its GB/s is divided by. Two
# threads have no memmap target in the issue (memmap's is one stream's figure).
RATIOS = {
    "tieredmem": [("ceiling", CEILING_TARGET), ("memmap", MEMMAP_TARGET)],
    "tieredmem+pmem": [("ceiling", CEILING_TARGET), ("memmap", MEMMAP_TARGET), ("tieredmem", PMEM_TARGET)],
    TWO_THREADS: [("ceiling", CEILING_TARGET), ("memmap", None)],
}
PASSES = {"sum1": "sum right after the fill", "sum2": "second sum"}
# pool.stats() counters reported per pass: (key, label, unit). bytes_read counts
# reads from PMEM and NVMe together (the engine does not split them).
PASS_COUNTERS = [
    ("bytes_read", "read from lower tiers (MiB; ratio: / optimum)", c.MiB),
    ("bytes_written", "written to lower tiers (MiB)", c.MiB),
    ("faults", "faults", 1),
    ("readahead", "blocks read ahead of the stream", 1),
]
# As the tiering suite's default: emulated PMEM at DRAM speed would flatter it.
PMEM_EMULATION = "optane"

# The ceiling: the disk's largest request (max_sectors_kb is 4096 on the project's
# machines), several in flight (one at a time wastes the disk).
CEILING_REQUEST = 4 * c.MiB
CEILING_IN_FLIGHT = 4
HUGE_PAGE = 2 * c.MiB  # the ceiling's buffers are in huge pages: see huge_page_buffer
WRITE_CHUNK = 8 * c.MiB  # only for preparing the files; not measured against

# ---------------------------------------------------------------- shared steps

def fill(a):
    a[:] = 1.0


def fill_then_sum(a):
    """Time the fill (first touch included) and the sum, and check the sum."""
    _, fill_s = c.timed(lambda: fill(a))
    total, sum_s = c.timed(a.sum)
    if total != a.size:
        raise c.NotRun(f"wrong result: sum {total} != {a.size}")
    return {"fill_s": fill_s, "sum_s": sum_s, "total_s": fill_s + sum_s}


def tieredmem_run(tm, pool_kwargs, sizes, measure):
    """One tieredmem repetition: a fresh pool with one float64 array per entry of
    `sizes` (elements), measure(arrays, pool) -> dict, then teardown in the order
    the engine requires (arrays gone before close())."""
    try:
        pool, setup_s = c.timed(lambda: tm.Pool(**pool_kwargs))
    except Exception as exc:
        raise c.NotRun(f"Pool() raised {c.describe_error(exc)}") from None
    arrays = None
    error = None
    try:
        arrays, alloc_s = c.timed(lambda: [pool.empty((n,), dtype="float64") for n in sizes])
        run = {"pool_setup_s": setup_s, "alloc_s": alloc_s, **measure(arrays, pool)}
    except Exception as exc:
        # Keep only the message: the exception's traceback would keep the arrays
        # alive past close().
        if isinstance(exc, c.NotRun):
            error = str(exc)
        else:
            error = f"using the pool raised {c.describe_error(exc)}"
    del arrays
    gc.collect()
    pool.close()
    if error is not None:
        raise c.NotRun(error)
    return run


# ------------------------------------------------------------------- in_budget

def in_budget_child(system, n, pool_kwargs):
    """In a fresh process: one untimed allocate-fill-sum, then a timed one, with
    numpy's allocator or from a tieredmem pool."""
    make = np.empty
    if system == "tieredmem":
        import tieredmem as tm
        pool = tm.Pool(**pool_kwargs)
        make = pool.empty
    fill_then_sum(make(n))  # warm-up: the process's first large allocation
    gc.collect()
    a, alloc_s = c.timed(lambda: make(n))
    run = {"alloc_s": alloc_s, **fill_then_sum(a)}
    if system == "tieredmem":
        run["stats"] = pool.stats()
    return run


def bench_in_budget(tm, tm_reason, budget, reps, workdir):
    n = int(budget * IN_BUDGET_FRACTION) // 8
    pool_kwargs = {"dram": budget, "nvme": budget, "nvme_path": str(workdir)}
    child = "benchmarks.bench_engine", "in_budget_child"
    systems = {"numpy": lambda: c.in_subprocess(*child, "numpy", n, pool_kwargs)}
    if tm is not None:
        systems["tieredmem"] = lambda: c.in_subprocess(*child, "tieredmem", n, pool_kwargs)
    records = c.interleave(reps, systems)
    if tm is None:
        records["tieredmem"] = c.not_run(tm_reason)
    metrics = [
        ("fill_s", "fill (s)", None),
        ("sum_s", "sum (s)", None),
        ("total_s", "fill+sum (s)", IN_BUDGET_TARGET),
    ]
    return {
        "params": {"budget_bytes": budget, "array_bytes": n * 8, "pool": pool_kwargs},
        "systems": records,
        "rows": c.comparison_rows(records, "numpy", "tieredmem", metrics),
    }


# --------------------------------------------------------------- seq_read_nvme

def write_uncached_file(path, size, pattern):
    """Write `size` bytes, `pattern` (WRITE_CHUNK bytes) over and over, to disk so
    that none of them stays in the page cache: the reads must measure the device,
    not memory. Returns seconds."""
    buf = mmap.mmap(-1, WRITE_CHUNK)  # page aligned, as O_DIRECT requires
    buf.write(pattern)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    try:
        start = time.perf_counter()
        for offset in range(0, size, WRITE_CHUNK):
            length = min(WRITE_CHUNK, size - offset)
            if os.pwritev(fd, [memoryview(buf)[:length]], offset) != length:
                raise OSError(f"short write at offset {offset}")
        os.fsync(fd)
        seconds = time.perf_counter() - start
        # O_DIRECT already bypassed the cache; this drops anything the fs kept anyway.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
        buf.close()
    return seconds


def huge_page_buffer(size):
    """A zeroed, private anonymous buffer of `size` bytes, in transparent huge pages
    where the kernel gives them (the run records how many it got): a 4 MiB O_DIRECT
    read into 4 KiB pages takes 1024 segments, more than the virtio disk takes in
    one request (max_segments 254 on the project's machines), so the kernel splits
    it into requests of ~600 KiB and the ceiling comes out at 0.9-1.1 GB/s where
    the same reads into huge pages made 1.4-2.1 GB/s (measured 2026-12-01)."""
    # Python's mmap(-1, ...) is MAP_SHARED (shmem, no huge pages here): ask for private.
    m = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -ctypes.addressof(ctypes.c_char.from_buffer(m)) % HUGE_PAGE
    m.madvise(mmap.MADV_HUGEPAGE, start, size)
    view = memoryview(m)[start:start + size]  # keeps m mapped while it lives
    view[:] = bytes(size)  # faulted in now, not in the first timed read
    return view


def anon_huge_bytes():
    """This process's anonymous memory in transparent huge pages."""
    with open("/proc/self/smaps_rollup") as f:
        line = next(line for line in f if line.startswith("AnonHugePages:"))
    return int(line.split()[1]) * 1024


def odirect_ceiling(path, size):
    """The disk's sequential read ceiling: CEILING_IN_FLIGHT threads, each keeping one
    CEILING_REQUEST O_DIRECT read in flight, thread k reading requests k, k +
    CEILING_IN_FLIGHT, ... (os.preadv releases the GIL, so the requests overlap)."""
    offsets = range(0, size, CEILING_REQUEST)
    huge_before = anon_huge_bytes()
    bufs = [huge_page_buffer(CEILING_REQUEST) for _ in range(CEILING_IN_FLIGHT)]
    huge = anon_huge_bytes() - huge_before

    def reader(k):
        for offset in offsets[k::CEILING_IN_FLIGHT]:
            length = min(CEILING_REQUEST, size - offset)
            if os.preadv(fd, [bufs[k][:length]], offset) != length:
                raise OSError(f"short read at offset {offset}")

    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        with ThreadPoolExecutor(CEILING_IN_FLIGHT) as threads:
            start = time.perf_counter()
            list(threads.map(reader, range(CEILING_IN_FLIGHT)))
            seconds = time.perf_counter() - start
    finally:
        os.close(fd)
    return {"read_s": seconds, "gbps": size / seconds / 1e9, "buffer_huge_page_bytes": huge}


def memmap_sum_child(cgroup_path, cgroup_version, path, n, dram):
    """In a fresh process inside its own memory cgroup (c.in_memory_cgroup): limit
    the group to what the interpreter uses now plus the DRAM budget, drop the file
    from the page cache (the previous repetition left part of it there), then time
    a numpy.memmap sum of it."""
    from tieredmem.bench import cgroup
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    baseline, limit = cgroup.limit_self(cgroup_path, cgroup_version, dram, swap=False)
    a = np.memmap(path, dtype="float64", mode="r", shape=(n,))
    total, sum_s = c.timed(a.sum)
    if total != n:
        raise c.NotRun(f"wrong result: sum {total} != {n}")
    return {"sum_s": sum_s, "gbps": n * 8 / sum_s / 1e9,
            "cgroup": {"baseline": baseline, "limit": limit}}


def baseline_systems(workdir, n, dram, params):
    """The disk's ceiling and numpy.memmap, each over a cold file as large as the
    tieredmem footprint: ({name: one-repetition function}, {name: not-run record}
    for those whose file could not be written)."""
    size = n * 8
    files = {
        # Random bytes, not zeros: a virtual disk may store zero blocks sparsely and
        # then answer reads of them without touching the device.
        "ceiling": (os.urandom(WRITE_CHUNK), lambda path: odirect_ceiling(path, size)),
        # Ones, as the tieredmem arrays hold, so that its sum is checked as theirs are.
        "memmap": (np.ones(WRITE_CHUNK // 8).tobytes(),
                   lambda path: c.in_memory_cgroup("benchmarks.bench_engine", "memmap_sum_child",
                                                   str(path), n, dram, tag="memmap")),
    }
    systems, failed = {}, {}
    for name, (pattern, measure) in files.items():
        path = workdir / f"{name}.bin"
        try:
            params[f"{name}_file_write_s"] = write_uncached_file(path, size, pattern)
        except OSError as exc:
            failed[name] = c.not_run(f"preparing its file failed: {c.describe_error(exc)}")
        else:
            systems[name] = functools.partial(measure, path)
    return systems, failed


def sum_each_in_a_thread(arrays):
    """The arrays' sums, each computed by a thread of its own (numpy releases the
    GIL in the sum): the same code for one stream and for two."""
    with ThreadPoolExecutor(len(arrays)) as threads:
        return list(threads.map(np.sum, arrays))


def fill_then_sums(arrays, pool):
    """Fill the arrays (together larger than DRAM, so the fill demotes blocks to the
    lower tiers), then time each pass of PASSES over them, with the engine's
    counters per pass (and the whole pool.stats() after each phase)."""
    _, fill_s = c.timed(lambda: [fill(a) for a in arrays])
    before = pool.stats()
    run = {"fill_s": fill_s, "stats_after_fill": before}
    nbytes = sum(a.nbytes for a in arrays)
    for name in PASSES:
        totals, seconds = c.timed(lambda: sum_each_in_a_thread(arrays))
        if totals != [a.size for a in arrays]:
            raise c.NotRun(f"wrong result in {name}: sums {totals}")
        after = pool.stats()
        run.update({f"{name}_s": seconds, f"{name}_gbps": nbytes / seconds / 1e9,
                    f"stats_after_{name}": after})
        run.update({f"{name}_{key}": after[key] - before[key] for key, _, _ in PASS_COUNTERS})
        before = after
    return run


def tieredmem_sums_child(sizes, pool_kwargs):
    """In a fresh process: one pool, one float64 array per entry of `sizes`, then
    fill_then_sums."""
    import tieredmem as tm
    return tieredmem_run(tm, pool_kwargs, sizes, fill_then_sums)


def tieredmem_systems(n, pool_kwargs):
    child = "benchmarks.bench_engine", "tieredmem_sums_child"
    pmem_kwargs = {**pool_kwargs, "pmem": pool_kwargs["dram"], "pmem_emulation": PMEM_EMULATION}
    return {
        "tieredmem": lambda: c.in_subprocess(*child, [n], pool_kwargs),
        "tieredmem+pmem": lambda: c.in_subprocess(*child, [n], pmem_kwargs),
        TWO_THREADS: lambda: c.in_subprocess(*child, [n // 2, n - n // 2], pool_kwargs),
    }


def tieredmem_rows(records, system, optimum):
    """Per pass: GB/s, its ratios to the baselines against the targets, and the
    engine's counters (bytes read against the optimum)."""
    if records[system]["status"] != "ok":
        return [{"system": system, "metric": records[system]["status"]}]
    rows = []
    for name, label in PASSES.items():
        key = f"{name}_gbps"
        rows.append(c.figure_row(records, system, key, f"{label} (GB/s)"))
        for baseline, target in RATIOS[system]:
            base_key = key if baseline in RATIOS else "gbps"  # a tieredmem system: the same pass
            rows.append(c.ratio_row(records, (system, key), (baseline, base_key),
                                    f"{label} / {baseline}", target))
        for counter, counter_label, unit in PASS_COUNTERS:
            row = c.figure_row(records, system, f"{name}_{counter}", f"{label}: {counter_label}", unit)
            if counter == "bytes_read":
                row["ratio"] = row["median"] * unit / optimum
            rows.append(row)
    return rows


def bench_seq_read(tm, tm_reason, dram, reps, workdir):
    n = 4 * dram // 8  # 4x the DRAM budget, in float64 elements
    optimum = n * 8 - dram  # bytes a pass must read at least: what DRAM cannot hold
    pool_kwargs = {"dram": dram, "nvme": 8 * dram, "nvme_path": str(workdir)}
    params = {"dram_bytes": dram, "array_bytes": n * 8, "optimum_read_bytes": optimum,
              "pmem_bytes": dram, "pmem_emulation": PMEM_EMULATION,
              "ceiling_request_bytes": CEILING_REQUEST, "ceiling_in_flight": CEILING_IN_FLIGHT,
              "pool": pool_kwargs}
    systems, records = baseline_systems(workdir, n, dram, params)
    if tm is not None:
        systems.update(tieredmem_systems(n, pool_kwargs))
    records.update(c.interleave(reps, systems))
    if tm is None:
        records.update({name: c.not_run(tm_reason) for name in RATIOS})
    rows = [c.figure_row(records, "ceiling", "gbps",
                         f"O_DIRECT read, {CEILING_IN_FLIGHT} x {CEILING_REQUEST // c.MiB} MiB "
                         "in flight (GB/s)"),
            c.figure_row(records, "memmap", "gbps", "sum, memory cgroup of DRAM + baseline (GB/s)")]
    for system in RATIOS:
        rows += tieredmem_rows(records, system, optimum)
    return {"params": params, "systems": records, "rows": rows}


# --------------------------------------------------------------------- report

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and 3 repetitions")
    parser.add_argument("--reps", type=int, help="repetitions per system (default 5, quick 3)")
    parser.add_argument("--out", type=Path, default=c.RESULTS_DIR,
                        help="directory for engine.json and engine.md")
    parser.add_argument("--nvme-dir", type=Path, default=c.DEFAULT_NVME_DIR,
                        help="directory on the disk under test (a temp dir is made inside)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    reps = args.reps or sizes["reps"]
    tm, tm_reason = c.import_tieredmem()
    args.nvme_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.nvme_dir))
    try:
        scenarios = {
            "in_budget": bench_in_budget(tm, tm_reason, sizes["budget"], reps, workdir),
            "seq_read_nvme": bench_seq_read(tm, tm_reason, sizes["seq_dram"], reps, workdir),
        }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "machine": c.machine_info(),
        "config": {"quick": args.quick, "reps": reps, "nvme_dir": str(args.nvme_dir),
                   "tieredmem_version": getattr(tm, "__version__", None)},
        "scenarios": scenarios,
    }
    c.publish(report, args.out, "engine", "tieredmem engine benchmark")


if __name__ == "__main__":
    main()
