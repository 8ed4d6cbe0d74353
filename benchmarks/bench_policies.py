"""Policy benchmark (issue 4): the placement policies in the engine.

Scenarios, each measured side by side in one run with interleaved
repetitions, every tieredmem repetition in a fresh process:

* seq_scan: summing an array 4x the DRAM budget whose blocks are all on the
  NVMe tier, with each policy, against the disk's O_DIRECT sequential read
  bandwidth (1 MiB requests, one at a time) measured in the same run. Also the
  sum right after the fill, which first writes back the quarter the fill left
  dirty in DRAM.
* zipf_gather: a Zipf(0.99) random gather (one element per access) over an
  array 4x the DRAM budget, with each policy: the engine's DRAM hit ratio
  (accesses that did not fault on a non-resident block) over Belady's optimal
  hit ratio for the same block trace and the same DRAM size.
* sampling_overhead: an in-DRAM workload (repeated elementwise updates and
  sums of an array half the budget) with hint sampling off and on (1%).
* traces: block-access traces recorded by the engine during seq_scan,
  zipf_gather and a column-standardize pass over a tall matrix 2x DRAM,
  replayed in the simulator against every policy and Belady at DRAM = 10%,
  25% and 50% of their distinct blocks.

Run from the repo root:  python -m benchmarks.bench_policies [--quick]
Results: DIR/policies.json (every raw figure) and DIR/policies.md; traces in
DIR/traces/*.npy.
"""

import argparse
import gc
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common as c
from benchmarks import sampling_overhead as overhead
from benchmarks.bench_engine import WRITE_CHUNK, odirect_ceiling, write_uncached_file

FULL = {"reps": 3, "dram": 512 * c.MiB, "zipf_accesses": 2_000_000, "overhead_s": 3.0}
QUICK = {"reps": 2, "dram": 128 * c.MiB, "zipf_accesses": 300_000, "overhead_s": 2.0}

SEQ_TARGET = (">=", 0.9)          # sum bandwidth / O_DIRECT bandwidth
BELADY_TARGET = (">=", 0.9)       # engine DRAM hit ratio / Belady's
ZIPF_S = 0.99
DRAM_SHARES = (0.10, 0.25, 0.50)
CHILD = "benchmarks.bench_policies"


def policies():
    import tieredmem as tm
    return tm.policy_names()


def make_pool(policy, dram, workdir, **kw):
    import tieredmem as tm
    return tm.Pool(dram=dram, nvme=8 * dram, nvme_path=workdir, policy=policy, **kw)


def delta(after, before, keys):
    return {k: after[k] - before[k] for k in keys}


COUNTERS = ("faults", "minor_faults", "wp_faults", "hint_faults", "zero_fills", "promotions", "prefetched",
            "readahead", "demotions", "clean_drops", "bytes_read", "bytes_written", "fault_ns", "policy_errors",
            "background_demotions", "policy_promotions", "sampled", "sample_ns")


# ------------------------------------------------------------------ seq_scan

def seq_child(policy, dram, workdir, trace_path=None):
    """In a fresh process: fill an array 4x DRAM, time the sum right after,
    then move everything to NVMe and time the sum again."""
    pool = make_pool(policy, dram, workdir)
    a = pool.empty(4 * dram // 8)
    a[:] = 1.0
    s0 = pool.stats()
    total, after_fill_s = c.timed(a.sum)
    pool.advise(a, "dontneed")
    s1 = pool.stats()
    if trace_path:
        pool.start_trace()
    total2, cold_s = c.timed(a.sum)
    if trace_path:
        np.save(trace_path, pool.stop_trace())
    s2 = pool.stats()
    if total != a.size or total2 != a.size:
        raise SystemExit(f"wrong sums {total}, {total2} != {a.size}")
    run = {"gbps": a.nbytes / cold_s / 1e9, "after_fill_gbps": a.nbytes / after_fill_s / 1e9,
           "stats": delta(s2, s1, COUNTERS), "after_fill_stats": delta(s1, s0, COUNTERS)}
    del a
    pool.close()
    return run


def bench_seq_scan(dram, reps, workdir):
    size = 4 * dram
    path = workdir / "odirect-read.bin"
    write_uncached_file(path, size, os.urandom(WRITE_CHUNK))  # random: a virtual disk may skip zero blocks
    systems = {"odirect": lambda: odirect_ceiling(path, size)}
    for p in policies():
        systems[f"tieredmem/{p}"] = lambda p=p: c.in_subprocess(CHILD, "seq_child", p, dram, str(workdir))
    records = c.interleave(reps, systems)
    path.unlink(missing_ok=True)
    rows = []
    for p in policies():
        rows += [r for r in c.comparison_rows(records, "odirect", f"tieredmem/{p}",
                                              [("gbps", "sum, all on NVMe (GB/s)", SEQ_TARGET)])
                 if r["system"] != "odirect" or p == policies()[0]]
        if records[f"tieredmem/{p}"]["status"] == "ok":
            s = c.summarize(records[f"tieredmem/{p}"], "after_fill_gbps")
            base = c.summarize(records["odirect"], "gbps")
            rows.append({"system": f"tieredmem/{p}", "metric": "sum right after the fill (GB/s)", **s,
                         "ratio": s["median"] / base["median"] if base else None})
    return {"params": {"dram_bytes": dram, "array_bytes": size}, "systems": records, "rows": rows}


# --------------------------------------------------------------- zipf_gather

def zipf_blocks(nblocks, accesses, seed=0):
    """A Zipf(0.99) block trace with the popular blocks spread over the array
    (a random permutation of ranks), so that popularity is not locality."""
    from tieredmem.policy import traces
    ranks = traces.zipf(nblocks, accesses, s=ZIPF_S, seed=seed)
    return np.random.default_rng(seed + 1).permutation(nblocks)[ranks]


def zipf_child(policy, dram, workdir, accesses, trace_path=None):
    """In a fresh process: gather one element per access of a Zipf block
    trace over an array 4x DRAM; the engine's hit ratio vs Belady's."""
    from tieredmem.policy import belady
    pool = make_pool(policy, dram, workdir)
    a = pool.empty(4 * dram // 8)
    a[:] = 1.0
    per_block = pool.block_size // 8
    blocks = zipf_blocks(a.size // per_block, accesses)
    idx = blocks * per_block + np.random.default_rng(7).integers(0, per_block, blocks.size)
    pool.advise(a, "dontneed")  # a cold start for every policy
    s0 = pool.stats()
    if trace_path:
        pool.start_trace()
    total, seconds = c.timed(lambda: a[idx].sum())
    if trace_path:
        np.save(trace_path, pool.stop_trace())
    s1 = pool.stats()
    if total != idx.size:
        raise SystemExit(f"wrong gather sum {total} != {idx.size}")
    d = delta(s1, s0, COUNTERS)
    # A miss is a fault on a block not in DRAM: all faults but those on
    # resident blocks (unmapped, first write, sampled).
    misses = d["faults"] - d["minor_faults"] - d["wp_faults"] - d["hint_faults"]
    dram_blocks = dram // pool.block_size
    del a
    pool.close()
    hit = 1 - misses / blocks.size
    bound = belady(blocks, dram_blocks)
    return {"hit_ratio": hit, "belady": bound, "of_belady": hit / bound, "seconds": seconds,
            "accesses_per_s": blocks.size / seconds, "stats": d}


def bench_zipf_gather(dram, accesses, reps, workdir):
    systems = {f"tieredmem/{p}": lambda p=p: c.in_subprocess(CHILD, "zipf_child", p, dram, str(workdir), accesses)
               for p in policies()}
    records = c.interleave(reps, systems)
    rows = []
    for name, record in records.items():
        if record["status"] != "ok":
            rows.append({"system": name, "metric": record["status"]})
            continue
        for key, label, target in (("hit_ratio", "DRAM hit ratio", None), ("belady", "Belady's hit ratio", None),
                                   ("of_belady", "hit ratio / Belady's", BELADY_TARGET),
                                   ("accesses_per_s", "accesses/s", None)):
            s = c.summarize(record, key)
            row = {"system": name, "metric": label, **s}
            if target:
                op, value = target
                row.update(ratio=s["median"], target=f"{op} {value}",
                           met="yes" if c.TARGET_OPS[op](s["median"], value) else "no")
            rows.append(row)
    return {"params": {"dram_bytes": dram, "array_bytes": 4 * dram, "accesses": accesses},
            "systems": records, "rows": rows}


# --------------------------------------------------------- sampling_overhead

def bench_sampling_overhead(dram, seconds, reps, workdir):
    systems = {name: lambda s=s: c.in_subprocess(overhead.CHILD, "overhead_child", s, dram, str(workdir), seconds)
               for name, s in (("sampling off", 0.0), ("sampling 1%", 0.01))}
    records = c.interleave(reps, systems)
    rows = c.comparison_rows(records, "sampling off", "sampling 1%", [("seconds", "time (s)", overhead.TARGET)])
    if records["sampling 1%"]["status"] == "ok":
        s = c.summarize(records["sampling 1%"], "hint_faults")
        rows.append({"system": "sampling 1%", "metric": "hint faults", **s})
    return {"params": {"dram_bytes": dram, "array_bytes": dram // 2}, "systems": records, "rows": rows}


# ------------------------------------------------------------------- traces

def standardize_child(dram, workdir, trace_path):
    """Record the trace of standardizing the columns of a tall matrix 2x DRAM
    (column means, then (x - mean) / std in row chunks)."""
    pool = make_pool("lru", dram, workdir)
    x = pool.empty((2 * dram // 8 // 64, 64))
    x[:] = np.random.default_rng(0).random(64)
    pool.start_trace()
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-9
    for i in range(0, x.shape[0], 1 << 16):
        x[i:i + (1 << 16)] -= mean
        x[i:i + (1 << 16)] /= std
    np.save(trace_path, pool.stop_trace())
    del x
    pool.close()
    return {}


def record_traces(dram, accesses, workdir, out):
    """Traces of the workloads above, recorded in fresh processes."""
    tdir = out / "traces"
    tdir.mkdir(parents=True, exist_ok=True)
    paths = {"seq_scan": tdir / "seq_scan.npy", "zipf_gather": tdir / "zipf_gather.npy",
             "standardize": tdir / "standardize.npy"}
    c.in_subprocess(CHILD, "seq_child", "lru", dram, str(workdir), str(paths["seq_scan"]))
    c.in_subprocess(CHILD, "zipf_child", "lru", dram, str(workdir), accesses, str(paths["zipf_gather"]))
    c.in_subprocess(CHILD, "standardize_child", dram, str(workdir), str(paths["standardize"]))
    return paths


def trace_table(paths):
    from tieredmem import policy
    names = policy.POLICIES
    columns = ["trace", "events", "DRAM", "belady"] + list(names)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    rows = []
    for name, path in paths.items():
        trace = np.load(path)
        distinct = len(np.unique(trace))
        for share in DRAM_SHARES:
            dram = max(1, int(share * distinct))
            bound = policy.belady(trace, dram)
            ratios = {p: policy.simulate(trace, p, dram)["dram_hit_ratio"] for p in names}
            rows.append({"trace": name, "events": int(trace.size), "dram_blocks": dram, "belady": bound, **ratios})
            cells = [f"{ratios[p]:.3f} ({ratios[p] / bound:.0%})" if bound else f"{ratios[p]:.3f}" for p in names]
            lines.append(f"| {name} | {trace.size} | {share:.0%} ({dram}) | {bound:.3f} | " + " | ".join(cells) + " |")
    return rows, "\n".join(lines)


# --------------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions")
    parser.add_argument("--reps", type=int, help="repetitions per system")
    parser.add_argument("--out", type=Path, default=c.RESULTS_DIR, help="directory for policies.json/.md")
    parser.add_argument("--nvme-dir", type=Path, default=c.DEFAULT_NVME_DIR,
                        help="directory on the disk under test (a temp dir is made inside)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = QUICK if args.quick else FULL
    reps = args.reps or cfg["reps"]
    args.nvme_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.nvme_dir))
    workdir.chmod(0o700)
    try:
        scenarios = {
            "seq_scan": bench_seq_scan(cfg["dram"], reps, workdir),
            "zipf_gather": bench_zipf_gather(cfg["dram"], cfg["zipf_accesses"], reps, workdir),
            "sampling_overhead": bench_sampling_overhead(cfg["dram"], cfg["overhead_s"], reps, workdir),
        }
        paths = record_traces(cfg["dram"], cfg["zipf_accesses"], workdir, args.out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    gc.collect()
    trace_rows, trace_md = trace_table(paths)
    report = {"machine": c.machine_info(), "config": {"quick": args.quick, "reps": reps},
              "scenarios": scenarios, "traces": trace_rows}
    c.publish(report, args.out, "policies", "tieredmem policy benchmark")
    md = (f"\n## Recorded traces, replayed (hit ratio, share of Belady's)\n\n"
          f"DRAM as a share of each trace's distinct blocks.\n\n{trace_md}\n")
    print(md, end="")
    with open(args.out / "policies.md", "a") as f:
        f.write(md)


if __name__ == "__main__":
    main()
