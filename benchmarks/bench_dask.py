"""Dask workers beyond their memory limit: tieredmem against Dask's own spill-to-disk.

A workload both can run: a dask.array of float64 persisted across two
single-threaded workers at twice their memory limit (each task's chunk fits
easily; what does not fit is finished results, which Dask spills by pickling
them to files), then PASSES reductions over it, each reading every chunk.

Systems, each repetition a fresh LocalCluster, interleaved:

* dask-spill: plain workers with Dask's defaults (target 60%, spill 70%,
  pause 80%, terminate 95% of the limit).
* tieredmem: the TieredMemory plugin's defaults (DRAM half the limit, NVMe in
  the worker's directory, Dask's spilling off).
* tieredmem+dask-spill: the plugin with Dask's spilling kept on
  (dask_spill=True): the measurement behind turning it off (docs/dask.md).

Run from the repo root:  python -m benchmarks.bench_dask [--quick] [--out DIR]
Results go to DIR/dask.json (every raw timing) and DIR/dask.md.
"""
import os
import threading
import time

import psutil

from benchmarks import common as c

LIMIT = "1GiB"
DATA_BYTES = 4 * c.GiB  # 2 GiB per worker: twice its limit
CHUNK_BYTES = 64 * c.MiB
PASSES = 3
SYSTEMS = ("dask-spill", "tieredmem", "tieredmem+dask-spill")
TARGET = ("<=", 1.0)  # tieredmem's time over Dask's spill-to-disk: faster


def disk_bytes(dask_worker):
    """Bytes this worker wrote to disk and read back: the pool's tier I/O and
    Dask's spill files'."""
    import tieredmem.dask as tmd
    report = tmd.stats() or {"bytes_written": 0, "bytes_read": 0}
    spill = getattr(dask_worker.data, "cumulative_metrics", {})
    return {"written": report["bytes_written"] + spill.get(("disk-write", "bytes"), 0),
            "read": report["bytes_read"] + spill.get(("disk-read", "bytes"), 0)}


class PeakRSS:
    """The largest RSS any of the worker processes reached, polled every 50 ms
    (Dask's monitors look every 100 ms)."""

    def __init__(self, pids):
        self.procs = [psutil.Process(pid) for pid in pids]
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while not self.stop.wait(0.05):
            for p in self.procs:
                try:
                    self.peak = max(self.peak, p.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass

    def done(self):
        self.stop.set()
        self.thread.join()
        return self.peak


def one_run(system, nvme_dir):
    import dask.array as da
    from distributed import Client, LocalCluster

    import tieredmem.dask as tmd

    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=LIMIT, dashboard_address=":0",
                      local_directory=str(nvme_dir)) as cluster, Client(cluster) as client:
        if system != "dask-spill":
            client.register_plugin(tmd.TieredMemory(dask_spill=system == "tieredmem+dask-spill"))
        n, chunk = DATA_BYTES // 8, CHUNK_BYTES // 8
        rss = PeakRSS(client.run(os.getpid).values())
        start = time.perf_counter()
        x = da.random.RandomState(0).random_sample(n, chunks=chunk).persist()
        client.wait_for_workers(2)
        x.sum().compute()  # the persist is done once its chunks are
        persisted = time.perf_counter()
        results = [float(r) for r in (x.sum().compute(), (x * x).sum().compute(), x.max().compute())][:PASSES]
        end = time.perf_counter()
        peak = rss.done()
        io = list(client.run(disk_bytes).values())
        killed = len(client.get_events("worker-restart-memory"))
    return {"persist_s": persisted - start, "passes_s": end - persisted, "total_s": end - start,
            "results": results, "disk_written": sum(d["written"] for d in io), "disk_read": sum(d["read"] for d in io),
            "workers_killed": killed,
            "peak_rss": peak}


def main():
    parser = c.bench_parser(__doc__, "dask", reps_help="repetitions per system (default 5, quick 2)",
                            quick_help="2 repetitions")
    args = parser.parse_args()
    reps = args.reps or (2 if args.quick else 5)
    args.nvme_dir.mkdir(parents=True, exist_ok=True)
    records = c.interleave(reps, {s: (lambda s=s: one_run(s, args.nvme_dir)) for s in SYSTEMS})
    results = {tuple(run["results"]) for r in records.values() for run in r["runs"]}
    metrics = [("total_s", "total s", TARGET), ("persist_s", "persist s", None), ("passes_s", "passes s", None),
               ("disk_written", "bytes written to disk", None), ("disk_read", "bytes read from disk", None),
               ("peak_rss", "a worker's peak RSS, bytes", None)]
    rows = c.comparison_rows(records, "dask-spill", "tieredmem", metrics)
    untargeted = [(key, label, None) for key, label, _ in metrics]  # the target is against dask-spill
    rows += [r for r in c.comparison_rows(records, "tieredmem", "tieredmem+dask-spill", untargeted)
             if r["system"] == "tieredmem+dask-spill"]
    report = (f"Dask: {DATA_BYTES / c.GiB:g} GiB persisted over "
              f"two workers of {LIMIT}, {PASSES} passes; {reps} repetitions\n\n" + c.markdown_table(rows) +
              f"\n\nresults identical across systems: {len(results) == 1}\n")
    c.write_json(args.out / "dask.json", {"machine": c.machine_info(), "records": records})
    (args.out / "dask.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
