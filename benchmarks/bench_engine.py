"""Engine benchmark: tieredmem against plain numpy and against the raw disk.

Scenarios, each measured side by side in one run with interleaved repetitions:

* in_budget: fill then sum an array that fits the DRAM budget, plain numpy vs
  an array from a tieredmem pool (the cost of the engine when nothing spills).
* seq_read_nvme: the disk's O_DIRECT sequential read bandwidth vs the bandwidth
  of summing a tieredmem array whose blocks were demoted to the NVMe tier.

Run from the repo root:  python -m benchmarks.bench_engine [--quick] [--out DIR]
Every figure printed is measured in the run; results go to DIR/engine.json
(with every raw timing) and DIR/engine.md.
"""

import argparse
import gc
import mmap
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common as c

FULL = {"reps": 5, "budget": 1 * c.GiB, "seq_dram": 512 * c.MiB}
QUICK = {"reps": 3, "budget": 256 * c.MiB, "seq_dram": 128 * c.MiB}

IN_BUDGET_FRACTION = 0.5  # the array takes this share of the DRAM budget
IN_BUDGET_TARGET = ("<=", 1.3)  # tieredmem/numpy fill+sum time
SEQ_READ_TARGET = (">=", 0.5)  # tieredmem sum bandwidth / O_DIRECT bandwidth

READ_CHUNK = 1 * c.MiB  # the request size the O_DIRECT baseline reads with
WRITE_CHUNK = 8 * c.MiB  # only for preparing the file; not measured against

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


def tieredmem_run(tm, pool_kwargs, n, measure):
    """One tieredmem repetition: a fresh pool with one n-element float64 array,
    measure(a, pool) -> dict, then pool.stats(), then teardown in the order the engine
    requires (arrays gone before close())."""
    try:
        pool, setup_s = c.timed(lambda: tm.Pool(**pool_kwargs))
    except Exception as exc:
        raise c.NotRun(f"Pool() raised {c.describe_error(exc)}") from None
    a = None
    error = None
    try:
        a, alloc_s = c.timed(lambda: pool.empty((n,), dtype="float64"))
        run = {"pool_setup_s": setup_s, "alloc_s": alloc_s, **measure(a, pool)}
        run["stats"] = pool.stats()
    except Exception as exc:
        # Keep only the message: the exception's traceback would keep `a` alive
        # past close().
        if isinstance(exc, c.NotRun):
            error = str(exc)
        else:
            error = f"using the pool raised {c.describe_error(exc)}"
    del a
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

def write_uncached_file(path, size):
    """Write `size` bytes to disk so that none of them stays in the page cache:
    the O_DIRECT reads must measure the device, not memory. Returns seconds."""
    buf = mmap.mmap(-1, WRITE_CHUNK)  # page aligned, as O_DIRECT requires
    # Random bytes, not zeros: a virtual disk may store zero blocks sparsely and
    # then answer reads of them without touching the device.
    buf.write(os.urandom(WRITE_CHUNK))
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


def odirect_read(path, size):
    """Read the file sequentially with O_DIRECT, one READ_CHUNK request at a time."""
    buf = mmap.mmap(-1, READ_CHUNK)  # page aligned, as O_DIRECT requires
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        start = time.perf_counter()
        for offset in range(0, size, READ_CHUNK):
            if os.preadv(fd, [buf], offset) != READ_CHUNK:
                raise OSError(f"short read at offset {offset}")
        seconds = time.perf_counter() - start
    finally:
        os.close(fd)
        buf.close()
    return {"read_s": seconds, "gbps": size / seconds / 1e9}


def sum_after_demotion(a, pool):
    """Fill the array (which is larger than DRAM, so the fill demotes blocks to
    NVMe), then time a sum that has to bring them back."""
    _, fill_s = c.timed(lambda: fill(a))
    stats_after_fill = pool.stats()
    total, sum_s = c.timed(a.sum)
    if total != a.size:
        raise c.NotRun(f"wrong result: sum {total} != {a.size}")
    return {
        "fill_s": fill_s,
        "stats_after_fill": stats_after_fill,
        "sum_s": sum_s,
        "gbps": a.nbytes / sum_s / 1e9,
    }


def bench_seq_read(tm, tm_reason, dram, reps, workdir):
    n = 4 * dram // 8  # 4x the DRAM budget, in float64 elements
    size = n * 8
    pool_kwargs = {"dram": dram, "nvme": 8 * dram, "nvme_path": str(workdir)}
    params = {"dram_bytes": dram, "array_bytes": size, "read_chunk": READ_CHUNK,
              "pool": pool_kwargs}
    path = workdir / "odirect-read.bin"
    systems = {}
    try:
        params["file_write_s"] = write_uncached_file(path, size)
    except OSError as exc:
        odirect_reason = f"preparing the O_DIRECT file failed: {c.describe_error(exc)}"
    else:
        odirect_reason = None
        systems["odirect"] = lambda: odirect_read(path, size)
    if tm is not None:
        systems["tieredmem"] = lambda: tieredmem_run(tm, pool_kwargs, n, sum_after_demotion)
    records = c.interleave(reps, systems)
    path.unlink(missing_ok=True)
    if odirect_reason is not None:
        records["odirect"] = c.not_run(odirect_reason)
    if tm is None:
        records["tieredmem"] = c.not_run(tm_reason)
    metrics = [("gbps", "sequential read (GB/s)", SEQ_READ_TARGET)]
    return {
        "params": params,
        "systems": records,
        "rows": c.comparison_rows(records, "odirect", "tieredmem", metrics),
    }


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
