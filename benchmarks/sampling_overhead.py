"""The hint-sampling overhead workload (issue 4: sampling at 1% may cost at
most 2%), measured by bench_policies and, with publishing on and off, by
bench_publish: repeated elementwise updates and sums of an array half the
DRAM budget, all in DRAM, so that only sampling (and what runs beside it)
can slow it down."""
import time

CHILD = "benchmarks.sampling_overhead"
TARGET = ("<=", 1.02)  # time with sampling / time without


def overhead_child(sampling, dram, workdir, seconds):
    """In a fresh process: repeated a += 1; a.sum() over an array half the
    budget, for about `seconds` at 4 GB/s."""
    import tieredmem as tm
    pool = tm.Pool(dram=dram, nvme=8 * dram, nvme_path=workdir, policy="lru", sampling=sampling)
    a = pool.zeros(dram // 2 // 8)
    a += 1.0  # everything resident before timing
    # A round moves the array 3 times (a += 1 reads and writes, sum reads);
    # a fixed count, from the size alone, so both systems do the same work.
    rounds = max(3, int(seconds * 4e9 / (3 * a.nbytes)))
    start = time.perf_counter()
    for _ in range(rounds):
        a += 1.0
        a.sum()
    elapsed = time.perf_counter() - start
    st = pool.stats()
    if a[0] != rounds + 1:
        raise SystemExit(f"wrong value {a[0]} != {rounds + 1}")
    del a
    pool.close()
    return {"seconds": elapsed, "rounds": rounds, "hint_faults": st["hint_faults"], "sampled": st["sampled"],
            "sample_ns": st["sample_ns"]}
