"""Host groups (issue 16, docs/sharing.md): processes that share one DRAM
budget, divided by measured benefit, against the same processes with an
equal static split of it.

    python -m benchmarks.bench_sharing [--quick] [--reps N] [--out DIR] [--nvme-dir DIR]

Two configurations, each run both ways (a static split: Pool(dram=budget/n)
each; shared: Pool(share=Share(group, host_dram=budget)) each, the default
period), the two ways interleaved in every repetition:

- "hot + scan": a process with a reusable hot set of 60% of the budget,
  which reads every 64 KiB row of it once per round in a new random order,
  beside a process that sums an array of 4x the budget, pass after pass.
  Targets: the hot-set process at least 1.5x as fast shared as split; the
  scanner at most 10% slower.
- "three mixed": a hot set of 40% of the budget (as above), the scanner,
  and a process that sums an array of 45% of the budget in order, again and
  again (a loop); reported, no target.

"hot + scan" also runs a third way, a static split near the one the group
reaches (SPLITS): the scanner's rate there, against the equal split, is what
it loses to the hot-set process running at full speed rather than to the
sharing itself.

The processes start one after the other (each joins and writes its data;
shared, the first holds the whole budget until the next joins, and they
start from an equal split), then all are told to go at once and each works
for the same wall time; its rate is its work over that time, the
arbitration's first periods included. Rates in the second half of the time
(the steady state) are reported too.

Two more scenarios explain and price it:
- "scanner: DRAM and a CPU-bound neighbour": the scanner alone, with the
  equal split's DRAM and with half of it, and each beside a process that
  only computes (as the hot-set process does once its set fits): what the
  scanner loses to less DRAM, and what to a neighbour that takes a CPU.
- "cost of measuring": in one process, two pools sampling at 1%, one
  measuring (csrc/ghost.c) and one not, take turns on the same workload (the
  hint-sampling overhead workload of benchmarks/sampling_overhead.py, all in
  DRAM: parks and hints; and the hot-set gather over 1.5x DRAM: evictions and
  refaults), made in both orders; the median of the paired ratios of each
  order and their geometric mean; and the census a read takes, per block.

--scenarios picks some (default: all)."""
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common as c
from benchmarks import sampling_overhead as overhead

MiB = c.MiB
FULL = {"budget": 256 * MiB, "seconds": 25.0, "reps": 3}
QUICK = {"budget": 128 * MiB, "seconds": 15.0, "reps": 1}
ROW = 64 << 10          # the hot set's rows: one block each
CHUNK = 16 * MiB        # the sums' chunks: the clock is read between them
CONFIGS = {
    "hot + scan": [("hot", 0.60), ("scan", 4.0)],
    "three mixed": [("hot", 0.40), ("scan", 4.0), ("loop", 0.45)],
}
TARGETS = {("hot + scan", "hot"): (">=", 1.5), ("hot + scan", "scan"): (">=", 0.9)}
# A third system for "hot + scan": a static split near the one arbitration
# reaches, so that what the scanner loses beside a hot-set process that no
# longer waits on the disk (a CPU of the two) is told apart from what sharing
# costs it.
SPLITS = {"hot + scan": {"hot": 0.75, "scan": 0.25}}
MODES = ("static", "shared", "static at the shared split")
SCENARIOS = ("hot-scan", "three", "scanner-cpu", "cost")
CONFIG_OF = {"hot-scan": "hot + scan", "three": "three mixed"}


# ------------------------------------------------------------ a member

def _work(kind, a, rng):
    """One unit of work on array a: (bytes read, the function that does it)."""
    if kind == "hot":
        rows = a.reshape(-1, ROW // 8)

        def round_():
            for chunk in rng.permutation(len(rows)).reshape(-1, 16):  # 16 rows a gather: 1 MiB scratch
                rows[chunk].sum()
            return a.nbytes
        return round_
    pos = [0]

    def chunk_():  # scan and loop: the next chunk, from the start again after the end
        start = pos[0]
        a[start:start + CHUNK // 8].sum()
        pos[0] = (start + CHUNK // 8) % a.size
        return min(CHUNK, a.nbytes - start * 8)
    return chunk_


def member(kind, fraction, mode, budget, dram, nvme_dir, seconds, group):
    """In a process of its own: make the pool, write the data, say so on
    stdout, wait for "go" on stdin, work for `seconds`, print the result."""
    import numpy as np
    import tieredmem as tm
    if mode == "shared":
        pool = tm.Pool(nvme="8GiB", nvme_path=nvme_dir, share=tm.Share(group, host_dram=budget))
    else:
        pool = tm.Pool(dram=dram, nvme="8GiB", nvme_path=nvme_dir)
    n = int(budget * fraction) // MiB * MiB  # whole gathers of 16 rows
    a = pool.empty(n // 8)
    a[:] = 1.0
    work = _work(kind, a, np.random.default_rng(0))
    print("ready", flush=True)
    sys.stdin.readline()
    st0, t0 = pool.stats(), time.monotonic()
    done, half, timeline = 0, None, []
    while (t := time.monotonic() - t0) < seconds:
        if half is None and t >= seconds / 2:
            half = (done, t)
        done += work()
        if mode == "shared" and (not timeline or t - timeline[-1][0] >= 1.0):  # its DRAM, once a second
            timeline.append((round(t, 1), pool.stats()["share"]["grant"]))
    elapsed = time.monotonic() - t0
    st = pool.stats()
    result = {"rate": done / elapsed, "steady_rate": (done - half[0]) / (elapsed - half[1]),
              "read_bytes": st["bytes_read"] - st0["bytes_read"],
              "stalled": (st["fault_ns"] - st0["fault_ns"]) / 1e9 / elapsed,
              "grant_end": st["share"]["grant"] if "share" in st else dram, "grants": timeline,
              "measure_cost": st["share"]["cost"] if "share" in st else 0.0}
    print(json.dumps(result), flush=True)
    sys.stdin.readline()  # the others may still be running: hold the DRAM until all are done


# ------------------------------------------------------------ a run

def run(members, mode, split, budget, seconds, workdir, burner=False):
    """One run of `members` ((kind, fraction) pairs): their results by kind.
    Static pools get the budget's shares in `split` (by kind), or equal
    shares; beside a process that only computes if `burner`."""
    group = f"bench-{Path(workdir).name}-{time.monotonic_ns()}"
    procs = [subprocess.Popen([sys.executable, "-c", BURNER])] if burner else []
    try:
        for kind, fraction in members:
            dram = int(budget * split[kind]) // MiB * MiB if split else budget // len(members)
            args = (kind, fraction, mode, budget, dram, str(workdir), seconds, group)
            code = f"from benchmarks.bench_sharing import member; member(*{args!r})"
            p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, cwd=c.ROOT)
            procs.append(p)
            if p.stdout.readline().strip() != "ready":
                raise c.NotRun(f"the {kind} member exited with {p.wait()}")
        workers = procs[1:] if burner else procs
        for p in workers:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = {}
        for (kind, _), p in zip(members, workers):
            line = p.stdout.readline()
            if not line:
                raise c.NotRun(f"the {kind} member exited with {p.wait()}")
            results[kind] = json.loads(line)
        for p in workers:
            p.stdin.write("done\n")
            p.stdin.flush()
            p.wait(timeout=60)
        return {f"{kind}_{k}": v for kind, r in results.items() for k, v in r.items()}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# ------------------------------------------------------------ the scanner and the CPU

BURNER = "import numpy as np\na = np.ones(1 << 21)\nwhile True:\n    a.sum()"  # 16 MiB, in the caches: a CPU, no disk


def scanner_cpu(budget, seconds, reps, workdir):
    """The scanner alone at the equal split's DRAM and at half of it, each
    alone and beside a process that only computes."""
    systems = {}
    for share in (0.5, 0.25):
        for burner in (False, True):
            name = f"{int(budget * share) // MiB} MiB{' beside a CPU-bound process' if burner else ', alone'}"
            systems[name] = lambda s=share, b=burner: run([("scan", 4.0)], "static", {"scan": s}, budget, seconds,
                                                          workdir, burner=b)
    records = c.interleave(reps, systems)
    base = next(iter(records))
    out = []
    for name in records:
        row = c.figure_row(records, name, "scan_rate", "scan: MB/s", 1e6)
        if name != base and records[name]["status"] == "ok" and records[base]["status"] == "ok":
            row["ratio"] = c.summarize(records[name], "scan_rate")["median"] / c.summarize(records[base], "scan_rate")["median"]
        out += [row, c.figure_row(records, name, "scan_stalled", "scan: stalled")]
    return {"params": {"budget_bytes": budget, "seconds": seconds}, "systems": records, "rows": out}


# ------------------------------------------------------------ the cost of measuring

GHOST_PASSES = 12


def ghost_child(measuring_first, workload, dram, workdir, seconds):
    """In one process, two pools (one measuring, one not), made in the given
    order, taking turns on `workload`, pass by pass, the same rounds each: the
    median of the time measuring over the time not, and the census's time
    per block."""
    import numpy as np
    import tieredmem as tm
    from tieredmem._engine import ffi, lib
    order = (True, False) if measuring_first else (False, True)
    pools = {m: tm.Pool(dram=dram, nvme=8 * dram, nvme_path=workdir, sampling=0.01) for m in order}
    lib.tm_ghost_enable(pools[True]._p)
    size = dram // 2 if workload == "in DRAM" else dram * 3 // 2 // MiB * MiB
    arrays = {m: pool.zeros(size // 8) for m, pool in pools.items()}
    works = {m: _work("hot", a, np.random.default_rng(0)) for m, a in arrays.items()}
    for a in arrays.values():
        a += 1.0
    # Rounds per pass: as many as the first pool does in its share of the time.
    start, rounds = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / GHOST_PASSES / 2:
        works[order[0]]() if workload != "in DRAM" else overhead_round(arrays[order[0]])
        rounds += 1
    times = {m: [] for m in order}
    for i in range(GHOST_PASSES):
        for m in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(rounds):
                works[m]() if workload != "in DRAM" else overhead_round(arrays[m])
            times[m].append(time.perf_counter() - start)
    g = ffi.new("tm_ghost_stats *")
    lib.tm_ghost_read(pools[True]._p, g)
    before = g.census_ns
    lib.tm_ghost_read(pools[True]._p, g)
    census_per_block = (g.census_ns - before) / (size // (64 << 10))
    del arrays, works
    for pool in pools.values():
        pool.close()
    return {"ratio": statistics.median(on / off for on, off in zip(times[True], times[False])),
            "measuring_s": statistics.median(times[True]), "not_s": statistics.median(times[False]),
            "census_ns_per_block": census_per_block}


def overhead_round(a):
    """A round of the hint-sampling overhead workload (sampling_overhead.py)."""
    a += 1.0
    a.sum()


def ghost_cost(budget, seconds, workdir):
    """Measuring against not, in DRAM and spilling; pools of half the budget."""
    scenarios = {}
    for workload in ("in DRAM", "spilling"):
        records = c.interleave(1, {
            f"measuring made {'first' if first else 'second'}": lambda first=first: c.in_subprocess(
                "benchmarks.bench_sharing", "ghost_child", first, workload, budget // 2, str(workdir), seconds)
            for first in (True, False)})
        medians = [c.summarize(r, "ratio") for r in records.values()]
        out = [{"system": name, "metric": "measuring / not, per pass", **m} if m else
               {"system": name, "metric": r["status"]} for (name, r), m in zip(records.items(), medians)]
        if all(medians):
            ratio = math.prod(m["median"] for m in medians) ** 0.5
            op, limit = overhead.TARGET
            out.append({"system": "both orders (geometric mean)", "metric": "measuring / not", "ratio": ratio,
                        "target": f"{op} {limit}", "met": "yes" if ratio <= limit else "no"})
            out.append(c.figure_row(records, next(iter(records)), "census_ns_per_block", "census, ns per block"))
        scenarios[f"cost of measuring, {workload}"] = {"params": {"dram_bytes": budget // 2}, "systems": records,
                                                        "rows": out}
    return scenarios


def rows(config, records, kinds):
    """Per member, each figure of each system; rates against the equal split
    (the targets judge the shared system's)."""
    out = [{"system": mode, "metric": records[mode]["status"]} for mode in records if records[mode]["status"] != "ok"]
    if out:
        return out
    for kind in kinds:
        for key, label in (("rate", "MB/s"), ("steady_rate", "MB/s, second half"), ("stalled", "stalled"),
                           ("read_bytes", "MB read from NVMe"), ("grant_end", "DRAM at the end, MiB"),
                           ("measure_cost", "measuring, s/s")):
            unit = {"grant_end": MiB, "stalled": 1, "measure_cost": 1}.get(key, 1e6)
            for mode in records:
                row = c.figure_row(records, mode, f"{kind}_{key}", f"{kind}: {label}", unit)
                if mode != "static" and key in ("rate", "steady_rate"):
                    base, got = (c.summarize(records[m], f"{kind}_{key}") for m in ("static", mode))
                    row["ratio"] = got["median"] / base["median"]
                    target = TARGETS.get((config, kind)) if key == "rate" and mode == "shared" else None
                    if target:
                        row["target"] = f"{target[0]} {target[1]}"
                        row["met"] = "yes" if c.TARGET_OPS[target[0]](row["ratio"], target[1]) else "no"
                out.append(row)
    return out


def main(argv=None):
    parser = c.bench_parser(__doc__, "sharing", reps_help="repetitions (default 3, quick 1)",
                            quick_help="a 128 MiB group, 15 s runs, 1 repetition")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of: {', '.join(SCENARIOS)} (default: all)")
    args = parser.parse_args(argv)
    chosen = args.scenarios.split(",")
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"--scenarios: unknown {', '.join(sorted(unknown))} (known: {', '.join(SCENARIOS)})")
    cfg = QUICK if args.quick else FULL
    reps = args.reps or cfg["reps"]
    args.nvme_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.nvme_dir))
    workdir.chmod(0o700)
    scenarios = {}
    try:
        for config in [CONFIG_OF[k] for k in chosen if k in CONFIG_OF]:
            modes = MODES if config in SPLITS else MODES[:2]
            records = c.interleave(reps, {
                mode: lambda m=mode: run(CONFIGS[config], m, SPLITS[config] if m == MODES[2] else None,
                                         cfg["budget"], cfg["seconds"], workdir) for mode in modes})
            kinds = [kind for kind, _ in CONFIGS[config]]
            scenarios[config] = {"params": {"budget_bytes": cfg["budget"], "seconds": cfg["seconds"],
                                            "members": CONFIGS[config]},
                                 "systems": records, "rows": rows(config, records, kinds)}
        if "scanner-cpu" in chosen:
            scenarios["scanner: DRAM and a CPU-bound neighbour"] = scanner_cpu(cfg["budget"], cfg["seconds"] / 2,
                                                                                 reps, workdir)
        if "cost" in chosen:
            scenarios.update(ghost_cost(cfg["budget"], cfg["seconds"], workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {"machine": c.machine_info(), "config": {"quick": args.quick, "reps": reps, **cfg},
              "scenarios": scenarios}
    c.publish(report, args.out, "sharing", "tieredmem host groups: shared by benefit against an equal static split")


if __name__ == "__main__":
    main()
