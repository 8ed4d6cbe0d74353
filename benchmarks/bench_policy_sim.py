"""Policy simulator benchmark: replay throughput, and hit ratios against Belady.

* throughput: events/s of tm.policy.simulate for each policy (with the
  stream layer, the default, without and with a PMEM tier; and without the
  layer) and of tm.policy.belady, side by side on one Zipf(0.99)
  trace of 10 M events, DRAM = 10% of its distinct blocks. Calls are timed
  end to end (validation and id remap included) after a warm-up call that
  compiles the kernels; median/min/max over repetitions, interleaved.
* hit ratios: every policy's DRAM hit ratio, with the stream layer and
  without it (streams=False), on every synthetic trace at DRAM = 10%, 25%
  and 50% of the trace's distinct blocks, with Belady's MIN and each
  policy's share of it.

Run from the repo root:  python -m benchmarks.bench_policy_sim [--quick]
"""

import argparse

import numba
import numpy as np

from benchmarks import common as c
from tieredmem import policy

FULL = {"reps": 5, "footprint": 50_000, "length": 1_000_000}
QUICK = {"reps": 2, "footprint": 10_000, "length": 200_000}

THROUGHPUT_EVENTS = 10_000_000
THROUGHPUT_BLOCKS = 1_000_000
THROUGHPUT_DRAM = 0.10
THROUGHPUT_PMEM = 0.20  # of distinct blocks, for the "+pmem" rows
THROUGHPUT_TARGET = (">=", 10e6)  # events/s
DRAM_SHARES = (0.10, 0.25, 0.50)


def distinct_blocks(trace):
    return len(np.unique(trace))


# ---------------------------------------------------------------- throughput

def replay_calls(trace, dram, pmem):
    """{row name: fn()} replaying the trace once under each configuration."""
    calls = {}
    for name in policy.POLICIES:
        calls[name] = lambda name=name: policy.simulate(trace, name, dram)
        calls[f"{name}+pmem"] = lambda name=name: policy.simulate(trace, name, dram, pmem)
        calls[f"{name} (no streams)"] = lambda name=name: policy.simulate(trace, name, dram, streams=False)
    calls["belady"] = lambda: policy.belady(trace, dram)
    return calls


def measured_rate(call, events):
    """A one-repetition system for common.interleave."""
    def run():
        _, seconds = c.timed(call)
        return {"events_per_s": events / seconds}
    return run


def throughput_rows(reps):
    trace = policy.traces.zipf(THROUGHPUT_BLOCKS, THROUGHPUT_EVENTS, s=0.99, seed=0)
    distinct = distinct_blocks(trace)
    dram = int(THROUGHPUT_DRAM * distinct)
    pmem = int(THROUGHPUT_PMEM * distinct)
    systems = {name: measured_rate(call, trace.size)
               for name, call in replay_calls(trace, dram, pmem).items()}
    warm = trace[:10_000]
    for name in policy.POLICIES:  # compile (or load from cache) every kernel
        policy.simulate(warm, name, 100, 100)
        policy.simulate(warm, name, 100, 100, per_access=True)
    policy.belady(warm, 100)
    records = c.interleave(reps, systems)
    rows = []
    for name, record in records.items():
        if record["status"] != "ok":
            rows.append({"system": name, "metric": record["status"]})
            continue
        summary = c.summarize(record, "events_per_s")
        op, value = THROUGHPUT_TARGET
        met = c.TARGET_OPS[op](summary["median"], value)
        rows.append({"system": name, "metric": "events/s", **summary,
                     "target": f"{op} {value:.0e}", "met": "yes" if met else "no"})
    header = (f"Zipf(0.99) over {THROUGHPUT_BLOCKS} blocks, {trace.size} events, "
              f"{distinct} distinct; DRAM {dram} blocks, PMEM (+pmem rows) "
              f"{pmem} blocks; {reps} repetitions.")
    return header, rows


# ---------------------------------------------------------------- hit ratios

def synthetic_traces(footprint, length):
    t = policy.traces
    return {
        "scan (2 passes)": t.scan(footprint, passes=2),
        "loop": t.loop(footprint, length),
        "zipf(0.99)": t.zipf(footprint, length, s=0.99, seed=1),
        "zipf(0.7)": t.zipf(footprint, length, s=0.7, seed=2),
        "shifting hot set": t.shifting_hot_set(footprint, length, hot_fraction=0.1,
                                               phases=4, seed=3),
        "mixed": t.mixed(footprint, length, seed=4),
    }


def ratio_cell(ratio, bound):
    share = f"{ratio / bound:.0%}" if bound > 0 else "-"
    return f"{ratio:.3f} ({share})"


def ratio_table(footprint, length):
    names = list(policy.POLICIES)
    columns = (["trace", "DRAM", "belady"] + [f"{p} + streams" for p in names]
               + [f"{p} alone" for p in names])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, trace in synthetic_traces(footprint, length).items():
        distinct = distinct_blocks(trace)
        for share in DRAM_SHARES:
            dram = max(1, int(share * distinct))
            bound = policy.belady(trace, dram)
            cells = [ratio_cell(policy.simulate(trace, p, dram, streams=streams)["dram_hit_ratio"], bound)
                     for streams in (True, False) for p in names]
            lines.append(f"| {name} | {share:.0%} ({dram}) | {bound:.3f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and smaller hit-ratio traces")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = QUICK if args.quick else FULL
    info = c.machine_info()
    print(f"# Policy simulator ({'quick' if args.quick else 'full'})\n")
    print(f"{info['date']}, {info['nproc_usable']} CPUs usable, numpy {info['numpy']}, "
          f"numba {numba.__version__}\n")
    header, rows = throughput_rows(cfg["reps"])
    print(f"## Throughput\n\n{header}\n\n{c.markdown_table(rows)}\n")
    print(f"## DRAM hit ratio (share of Belady's)\n\n{cfg['length']} events per trace "
          f"(scan: 2 passes) over {cfg['footprint']} blocks; DRAM as a share of the "
          f"trace's distinct blocks; each policy with the stream layer (the default) "
          f"and alone (streams=False).\n")
    print(ratio_table(cfg["footprint"], cfg["length"]))


if __name__ == "__main__":
    main()
