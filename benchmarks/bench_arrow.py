"""Arrow memory pool benchmark: tm.arrow_pool(pool) against pyarrow's default pool.

Scenarios, the two systems interleaved, each repetition in a fresh process
per system (so neither inherits the other's memory state):

* large_first_write: a 256 MiB pa.allocate_buffer and its first full write,
  fitting the DRAM budget (4x the buffer). Measured twice in each process:
  "fresh", the process's first allocation of that size, and "reused", the
  same again after the first was freed (where an allocator may hand back
  pages it kept).
* compute_output: pc.multiply over 32 M int64 (a 256 MiB result allocated
  and written by an Arrow kernel), after one untimed warm-up.

Run from the repo root:  python -m benchmarks.bench_arrow [--quick] [--out DIR]
Results go to DIR/arrow.json (every raw timing) and DIR/arrow.md.
"""
import gc
import tempfile
import time

import numpy as np

from benchmarks import common as c

LARGE_BYTES = 256 * c.MiB
TARGET = ("<=", 1.3)
SYSTEMS = ("pyarrow", "tieredmem")


def _memory_pool(system, nvme_dir):
    import pyarrow as pa
    if system == "pyarrow":
        return pa.default_memory_pool()
    import tieredmem as tm
    return tm.arrow_pool(tm.Pool(dram=4 * LARGE_BYTES, nvme="1GiB", nvme_path=nvme_dir))


def _first_write(pa, memory_pool, nbytes):
    start = time.perf_counter()
    buf = pa.allocate_buffer(nbytes, memory_pool=memory_pool)
    np.frombuffer(buf, dtype=np.uint8)[:] = 1
    seconds = time.perf_counter() - start
    del buf
    gc.collect()
    return seconds


def large_first_write_child(system, nbytes, nvme_dir):
    import pyarrow as pa
    memory_pool = _memory_pool(system, nvme_dir)
    fresh = _first_write(pa, memory_pool, nbytes)
    reused = _first_write(pa, memory_pool, nbytes)
    return {"fresh_s": fresh, "reused_s": reused, "backend": memory_pool.backend_name}


def compute_output_child(system, nbytes, nvme_dir):
    import pyarrow as pa
    import pyarrow.compute as pc
    memory_pool = _memory_pool(system, nvme_dir)
    source = pa.array(np.arange(nbytes // 8, dtype=np.int64))  # numpy's memory, zero-copy
    times = []
    for _ in range(2):  # the first is the warm-up
        start = time.perf_counter()
        out = pc.multiply(source, 3, memory_pool=memory_pool)
        times.append(time.perf_counter() - start)
        del out
        gc.collect()
    return {"seconds": times[1]}


def main(argv=None):
    parser = c.bench_parser(__doc__, "arrow")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    tm, reason = c.import_tieredmem()
    if tm is None:
        raise SystemExit(f"tieredmem not run: {reason}")
    from tieredmem import _arrow_build
    _arrow_build.extension_path()  # built before timing, not in a child's first run
    args.nvme_dir.mkdir(parents=True, exist_ok=True)
    scenarios = {}
    with tempfile.TemporaryDirectory(dir=args.nvme_dir) as nvme:
        for name, metrics in (
                ("large_first_write", [("fresh_s", "allocate + first write, fresh (s)", TARGET),
                                       ("reused_s", "allocate + first write, reused (s)", TARGET)]),
                ("compute_output", [("seconds", "pc.multiply, 256 MiB out (s)", TARGET)])):
            child = "benchmarks.bench_arrow", f"{name}_child"
            records = c.interleave(reps, {s: (lambda s=s: c.in_subprocess(*child, s, LARGE_BYTES, nvme))
                                          for s in SYSTEMS})
            scenarios[name] = {"params": {"buffer_bytes": LARGE_BYTES, "dram_bytes": 4 * LARGE_BYTES},
                               "records": records, "rows": c.comparison_rows(records, *SYSTEMS, metrics)}
    import pyarrow as pa
    machine = {**c.machine_info(), "pyarrow": pa.__version__, "pyarrow_default_pool": pa.default_memory_pool().backend_name}
    report = {"machine": machine, "config": {"quick": args.quick, "reps": reps}, "scenarios": scenarios}
    c.publish(report, args.out, "arrow", "tieredmem Arrow memory pool benchmark")


if __name__ == "__main__":
    main()
