"""Fill and sum an array larger than the DRAM budget, and show where it went.

Prints the array size, the budgets, the time taken, the bytes of the array per
tier, and the engine's fault, promotion and demotion counts."""
import time

import numpy as np

from ..pool import Pool
from ..sizes import format_size, parse_size


def add_arguments(parser):
    parser.add_argument("--size", default="1GiB", help="array size (default 1GiB)")
    parser.add_argument("--dram", default="256MiB", help="DRAM budget (default 256MiB)")
    parser.add_argument("--pmem", default="256MiB", help="PMEM tier, emulated in /dev/shm (default 256MiB)")
    parser.add_argument("--nvme", default="4GiB", help="NVMe tier (default 4GiB)")
    parser.add_argument("--nvme-path", default=None, help="directory of the NVMe tier")


def run(args, parser) -> int:
    size = parse_size(args.size, "--size")
    with Pool(dram=args.dram, pmem=args.pmem, nvme=args.nvme, nvme_path=args.nvme_path) as pool:
        st = pool.stats()
        print(f"pool: dram {format_size(st['dram']['capacity'])}, pmem {format_size(st['pmem']['capacity'])}, "
              f"nvme {format_size(st['nvme']['capacity'])}, block {format_size(pool.block_size)}")
        a = pool.empty((size // 8,), dtype="float64")
        print(f"array: {format_size(a.nbytes)} float64, {a.nbytes / st['dram']['capacity']:.1f}x the DRAM budget")

        t0 = time.perf_counter()
        chunk = 1 << 21
        for i in range(0, a.size, chunk):  # a pattern, written in 16 MiB steps
            a[i:i + chunk] = np.arange(i, min(i + chunk, a.size), dtype=np.float64)
        t1 = time.perf_counter()
        total = float(a.sum())
        t2 = time.perf_counter()
        expected = float(a.size) * (a.size - 1) / 2
        ok = total == expected

        placement = pool.placement(a)
        st = pool.stats()
        print(f"fill: {t1 - t0:.2f} s ({a.nbytes / (t1 - t0) / 1e9:.2f} GB/s)   "
              f"sum: {t2 - t1:.2f} s ({a.nbytes / (t2 - t1) / 1e9:.2f} GB/s)   checksum {'exact' if ok else 'WRONG'}")
        print("array per tier: " + ", ".join(f"{k} {format_size(v)}" for k, v in placement.items()))
        print(f"resident peak: {format_size(st['dram']['peak'])} (budget {format_size(st['dram']['capacity'])})")
        print(f"faults {st['faults']}, promotions {st['promotions']} ({st['prefetched']} prefetched), "
              f"demotions {st['demotions']} ({st['clean_drops']} clean drops), "
              f"read {format_size(st['bytes_read'])}, written {format_size(st['bytes_written'])}, "
              f"time in fault service {st['fault_ns'] / 1e9:.2f} s")
        del a
    return 0 if ok else 1
