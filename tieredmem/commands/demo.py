"""Fill and sum an array larger than the DRAM budget, against plain numpy.

    python -m tieredmem demo [--size 1GiB] [--dram 256MiB] [--pmem SIZE] [--nvme 4GiB]

Runs the same fill and sum twice, each in a fresh process: with plain numpy
(the array all in memory) and with the array in a tieredmem pool. Prints the
time and the process's peak memory of each, where the pool's array went, and
what the engine's counts mean."""
import argparse
import json
import subprocess
import sys
import time

import numpy as np

from ..pool import Pool
from ..sizes import format_size, parse_size

CHUNK = 1 << 21  # elements: the fill writes 16 MiB at a time


def add_arguments(parser):
    parser.add_argument("--size", default="1GiB", help="array size (default 1GiB)")
    parser.add_argument("--dram", default="256MiB", help="DRAM budget (default 256MiB)")
    parser.add_argument("--pmem", default="0", help="PMEM tier, emulated in /dev/shm: RAM (default: none)")
    parser.add_argument("--nvme", default="4GiB", help="NVMe tier (default 4GiB)")
    parser.add_argument("--nvme-path", default=None, help="directory of the NVMe tier")
    parser.add_argument("--child", choices=("numpy", "tieredmem"), help=argparse.SUPPRESS)


def peak_memory() -> int:
    """This process's peak resident memory (VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def fill_and_sum(a) -> dict:
    t0 = time.perf_counter()
    for i in range(0, a.size, CHUNK):  # a pattern whose sum is known
        a[i:i + CHUNK] = np.arange(i, min(i + CHUNK, a.size), dtype=np.float64)
    t1 = time.perf_counter()
    total = float(a.sum())
    t2 = time.perf_counter()
    return {"fill_s": t1 - t0, "sum_s": t2 - t1, "exact": total == float(a.size) * (a.size - 1) / 2}


def child(args) -> dict:
    n = parse_size(args.size, "--size") // 8
    if args.child == "numpy":
        out = fill_and_sum(np.empty(n))
        return {**out, "peak": peak_memory()}
    with Pool(dram=args.dram, pmem=args.pmem, nvme=args.nvme, nvme_path=args.nvme_path) as pool:
        a = pool.empty((n,))
        out = fill_and_sum(a)
        out.update(peak=peak_memory(), placement=pool.placement(a), stats=pool.stats())
        del a
    return out


def run_child(args, which) -> dict:
    cmd = [sys.executable, "-m", "tieredmem", "demo", "--child", which, "--size", args.size, "--dram", args.dram,
           "--pmem", args.pmem, "--nvme", args.nvme] + (["--nvme-path", args.nvme_path] if args.nvme_path else [])
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"tieredmem demo: the {which} run failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.splitlines()[-1])


def ratio(x, ref):
    return f"{x / ref:.1f}x" if ref > 0 else "-"


def run(args, parser) -> int:
    if args.child:
        print(json.dumps(child(args)))
        return 0
    for name in ("size", "dram", "pmem", "nvme"):
        try:
            parse_size(getattr(args, name), "--" + name)
        except ValueError as e:
            parser.error(str(e))
    plain = run_child(args, "numpy")
    tiered = run_child(args, "tieredmem")
    st, size = tiered["stats"], parse_size(args.size, "--size")
    dram, pmem = st["dram"]["capacity"], st["pmem"]["capacity"]
    print(f"A {format_size(size)} float64 array, filled in 16 MiB steps and summed, in a fresh process each:")
    print(f"  plain numpy (all in memory): fill {plain['fill_s']:.2f} s, sum {plain['sum_s']:.2f} s, "
          f"peak memory {format_size(plain['peak'])}")
    print(f"  tieredmem, DRAM budget {format_size(dram)}"
          + (f", PMEM {format_size(pmem)}" if pmem else "") + f", NVMe {format_size(st['nvme']['capacity'])}: "
          f"fill {tiered['fill_s']:.2f} s ({ratio(tiered['fill_s'], plain['fill_s'])} numpy's), "
          f"sum {tiered['sum_s']:.2f} s ({ratio(tiered['sum_s'], plain['sum_s'])}), "
          f"peak memory {format_size(tiered['peak'])} ({ratio(tiered['peak'], plain['peak'])})")
    print("    peak memory is the process's (VmHWM): the DRAM tier, the interpreter and libraries"
          + (", and the emulated PMEM tier, which is a file in /dev/shm: RAM, not persistent memory" if pmem else ""))
    tiers = [t for t in ("dram", "pmem", "nvme") if st[t]["capacity"]]
    print("  where the array ended up: " + ", ".join(f"{t} {format_size(tiered['placement'][t])}" for t in tiers))
    print(f"  faults {st['faults']}: accesses to blocks not in DRAM (first touches included), each served by "
          f"tieredmem's handler threads while the touching thread waited; {st['fault_ns'] / 1e9:.2f} s of "
          f"handler time in all")
    print(f"  promotions {st['promotions']}: blocks ({format_size(st['block_size'])} each) read back into DRAM, "
          f"{st['prefetched']} of them ahead of the faults that needed them; "
          f"{format_size(st['bytes_read'])} read")
    print(f"  demotions {st['demotions']}: blocks moved out of DRAM to stay within the budget; "
          f"{format_size(st['bytes_written'])} written, {st['clean_drops']} dropped without a write "
          f"(unchanged since they were last read)")
    ok = plain["exact"] and tiered["exact"]
    print("  sums: exact in both" if ok else "  sums: WRONG")
    return 0 if ok else 1
