"""Publishing benchmark (issue 15): what the pools' published statistics
cost. The hint-sampling overhead workload of bench_policies (repeated
elementwise updates and sums of an array half the DRAM budget, in DRAM) with
sampling off and at 1%, each with publishing on and off (TIEREDMEM_PUBLISH),
the four interleaved, every repetition in a fresh process.

Targets: sampling's overhead with publishing on, time with sampling 1% over
time without, <= 1.02 (bench_policies' target; also shown without
publishing, for comparison); publishing's own cost, time with it over time
without (sampling 1%), <= 1.02. The workload's runs are short (0.3 s here at
the default --seconds 3, six ticks): --seconds 30 gives them ~3 s. And, more
precisely than wall times on a shared machine can: the CPU time a pool's
background thread takes per second at rest, publishing and not (its
schedstat), whose difference is what publishing costs; and the workload on
two pools in one process, one publishing and one not, taking turns (a pair of
wall times a few seconds apart, in one memory state), in both orders of
creation.

Run from the repo root:  python -m benchmarks.bench_publish [--quick] [--reps N] [--seconds S]
Results: DIR/publish.json and DIR/publish.md.
"""
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import common as c
from benchmarks import sampling_overhead as overhead

CHILD = "benchmarks.bench_publish"
# bench_policies' sizes: DRAM budget, seconds of work per run
FULL = {"dram": 512 * c.MiB, "seconds": 3.0}
QUICK = {"dram": 128 * c.MiB, "seconds": 2.0}
REST_S = 5.0  # seconds a pool at rest is watched
PAIRED_PASSES = 60  # turns of each pool in one process
PAIRED_ROUNDS = 4  # rounds of the workload per turn (~0.1 s)
SYSTEMS = {  # name: (sampling, publish)
    "sampling off, publishing": (0.0, True),
    "sampling 1%, publishing": (0.01, True),
    "sampling off, not publishing": (0.0, False),
    "sampling 1%, not publishing": (0.01, False),
}


def publish_child(sampling, publish, dram, workdir, seconds):
    """overhead_child in a fresh process whose pools publish, or not."""
    os.environ["TIEREDMEM_PUBLISH"] = "1" if publish else "0"
    return overhead.overhead_child(sampling, dram, workdir, seconds)


def schedstat(tid):
    """(ns on a CPU, timeslices) of one of this process's threads."""
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        run_ns, _, slices = map(int, f.read().split())
    return run_ns, slices


def background_child(publish, dram, workdir, seconds):
    """In a fresh process: the CPU time per second of a pool's background
    thread, at rest, publishing or not. The pool holds an array of half its
    budget in DRAM and one of four times it never written, whose blocks the
    search for the largest arrays counts; sampling is off, so that the ticks
    do little else."""
    os.environ["TIEREDMEM_PUBLISH"] = "1" if publish else "0"
    import tieredmem as tm
    before = set(os.listdir("/proc/self/task"))
    pool = tm.Pool(dram=dram, nvme=8 * dram, nvme_path=workdir, sampling=False)
    engine = set(os.listdir("/proc/self/task")) - before  # its handler threads and its background thread
    a = pool.zeros(dram // 2 // 8)
    a += 1.0
    b = pool.zeros(4 * dram // 8)
    time.sleep(1.0)
    start = {tid: schedstat(tid) for tid in engine}
    time.sleep(seconds)
    end = {tid: schedstat(tid) for tid in engine}
    tid = max(engine, key=lambda t: end[t][1] - start[t][1])  # the one that wakes every tick
    del a, b
    pool.close()
    return {"cpu_us_per_s": (end[tid][0] - start[tid][0]) / 1e3 / seconds,
            "wakeups_per_s": (end[tid][1] - start[tid][1]) / seconds}


def paired_child(publishing_first, dram, workdir, passes):
    """In one fresh process, two pools sampling at 1%, one publishing and
    one not, made in the given order; the workload's rounds alternate between
    their arrays, pass by pass. The median over the passes of the time
    publishing over the time not. A pool's place in the process weighs by
    itself (the one made first was a few percent slower here): main() runs
    both orders, and their geometric mean cancels it."""
    import tieredmem as tm
    order = (True, False) if publishing_first else (False, True)
    pools = {pub: tm.Pool(dram=dram, nvme=8 * dram, nvme_path=workdir, sampling=0.01, publish=pub) for pub in order}
    arrays = {pub: pool.zeros(dram // 2 // 8) for pub, pool in pools.items()}
    times = {pub: [] for pub in order}
    for i in range(passes):
        for pub in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(PAIRED_ROUNDS):
                arrays[pub] += 1.0
                arrays[pub].sum()
            times[pub].append(time.perf_counter() - start)
    del arrays
    for pool in pools.values():
        pool.close()
    return {"ratio": statistics.median(on / off for on, off in zip(times[True], times[False])),
            "publishing_s": statistics.median(times[True]), "not_publishing_s": statistics.median(times[False])}


def paired_rows(records):
    """Each order's ratios, and both orders' geometric mean against the target."""
    medians = {name: c.summarize(record, "ratio") for name, record in records.items()}
    rows = [{"system": name, "metric": "publishing / not, per pass", **m} if m else
            {"system": name, "metric": records[name]["status"]} for name, m in medians.items()]
    if all(medians.values()):
        ratio = math.prod(m["median"] for m in medians.values()) ** (1 / len(medians))
        op, limit = overhead.TARGET
        rows.append({"system": "both orders (geometric mean)", "metric": "publishing / not", "ratio": ratio,
                     "target": f"{op} {limit}", "met": "yes" if ratio <= limit else "no"})
    return rows


def comparison(cfg, records, baseline, candidate, metric):
    return {"params": {"dram_bytes": cfg["dram"], "array_bytes": cfg["dram"] // 2}, "systems": records,
            "rows": c.comparison_rows(records, baseline, candidate, metric)}


def main(argv=None):
    parser = c.bench_parser(__doc__, "publish")
    parser.add_argument("--seconds", type=float, help="work per run, as the workload counts it (default: "
                        "bench_policies': 3, quick 2); the ticks that publish are 50 ms apart")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    cfg["seconds"] = args.seconds or cfg["seconds"]
    reps = args.reps or (3 if args.quick else 7)
    args.nvme_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=args.nvme_dir))
    workdir.chmod(0o700)
    try:
        systems = {name: lambda s=s, p=p: c.in_subprocess(CHILD, "publish_child", s, p, cfg["dram"], str(workdir),
                                                            cfg["seconds"])
                   for name, (s, p) in SYSTEMS.items()}
        records = c.interleave(reps, systems)
        paired = c.interleave(max(1, reps // 3), {
            f"{name} made first": lambda first=first: c.in_subprocess(CHILD, "paired_child", first, cfg["dram"],
                                                                      str(workdir), PAIRED_PASSES)
            for name, first in (("publishing", True), ("not publishing", False))})
        at_rest = c.interleave(reps, {
            name: lambda p=p: c.in_subprocess(CHILD, "background_child", p, cfg["dram"], str(workdir), REST_S)
            for name, p in (("at rest, not publishing", False), ("at rest, publishing", True))})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    metric = [("seconds", "time (s)", overhead.TARGET)]
    scenarios = {
        "sampling overhead, publishing": comparison(cfg, records, "sampling off, publishing",
                                                    "sampling 1%, publishing", metric),
        "sampling overhead, not publishing": comparison(cfg, records, "sampling off, not publishing",
                                                        "sampling 1%, not publishing", metric),
        "publishing overhead, sampling 1%": comparison(cfg, records, "sampling 1%, not publishing",
                                                       "sampling 1%, publishing", metric),
        "publishing overhead, paired in one process": {
            "params": {"dram_bytes": cfg["dram"], "array_bytes": cfg["dram"] // 2}, "systems": paired,
            "rows": paired_rows(paired)},
        "background thread at rest": comparison(cfg, at_rest, "at rest, not publishing", "at rest, publishing",
                                                [("cpu_us_per_s", "CPU (us/s)", None),
                                                 ("wakeups_per_s", "wake-ups/s", None)]),
    }
    report = {"machine": c.machine_info(), "config": {"quick": args.quick, "reps": reps, "seconds": cfg["seconds"]},
              "scenarios": scenarios}
    c.publish(report, args.out, "publish", "tieredmem publishing benchmark")


if __name__ == "__main__":
    main()
