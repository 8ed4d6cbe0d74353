"""A/B of two engine builds: the same cases, each in a fresh process, the two
builds alternating case by case and round by round (the disk is shared and
its speed drifts, so only figures from one run are compared).

    python -m benchmarks.bench_engine_ab OLD_PYTHON NEW_PYTHON [--rounds 3] [--out DIR]

OLD_PYTHON and NEW_PYTHON are the interpreters of two checkouts' venvs (for
example a `git worktree` of the last release and this one). Besides time, each
case reports what does not vary with noise: bytes read and written, faults.

A case runs as `python benchmarks/bench_engine_ab.py --case NAME` under the
build being measured and prints one JSON line, with the checkout whose
tieredmem it imported ("engine"): a run whose two builds import the same one
stops with an error."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MiB = 1 << 20
COUNTERS = ("bytes_read", "bytes_written", "faults", "wp_faults", "pinned_skips")


def timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t0


def case_in_budget(tm, np, nvme):
    """Fill then sum 512 MiB inside a 1 GiB budget: the engine's cost when nothing spills."""
    pool = tm.Pool(dram="1GiB", nvme="4GiB", nvme_path=nvme)
    a = pool.empty(512 * MiB // 8)
    _, fill_s = timed(lambda: a.fill(1.0))
    total, sum_s = timed(a.sum)
    assert total == a.size
    return pool, {"fill_s": fill_s, "sum_s": sum_s}


def case_seq4x(tm, np, nvme):
    """Second sum pass over 512 MiB on a 128 MiB budget: a stream from the NVMe tier."""
    pool = tm.Pool(dram="128MiB", nvme="4GiB", nvme_path=nvme)
    a = pool.empty(512 * MiB // 8)
    a.fill(1.0)
    a.sum()
    total, s = timed(a.sum)
    assert total == a.size
    return pool, {"sum2_s": s, "gbps": a.nbytes / s / 1e9}


def case_rmw2x(tm, np, nvme):
    """Two add passes over 256 MiB on 128 MiB: every block read and written back."""
    pool = tm.Pool(dram="128MiB", nvme="4GiB", nvme_path=nvme)
    a = pool.empty(256 * MiB // 8)
    a.fill(1.0)

    def rmw():
        for _ in range(2):
            np.add(a, 1.0, out=a)
    _, s = timed(rmw)
    assert a[0] == 3.0 and a[-1] == 3.0
    return pool, {"rmw_s": s}


def case_two_streams(tm, np, nvme):
    """Two threads, each summing its own 256 MiB array, 4x the budget together."""
    pool = tm.Pool(dram="128MiB", nvme="4GiB", nvme_path=nvme)
    a, b = pool.empty(256 * MiB // 8), pool.empty(256 * MiB // 8)
    a.fill(1.0)
    b.fill(2.0)
    a.sum()
    b.sum()
    sums = {}
    threads = [threading.Thread(target=lambda x=x, k=k: sums.__setitem__(k, x.sum())) for k, x in (("a", a), ("b", b))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = time.perf_counter() - t0
    assert sums == {"a": a.size, "b": 2 * b.size}
    return pool, {"two_s": s, "gbps": (a.nbytes + b.nbytes) / s / 1e9}


def case_fill_sum4x(tm, np, nvme):
    """A sum right after the fill of 512 MiB on 128 MiB: DRAM holds the fill's dirty tail."""
    pool = tm.Pool(dram="128MiB", nvme="4GiB", nvme_path=nvme)
    a = pool.empty(512 * MiB // 8)
    a.fill(1.0)
    total, s = timed(a.sum)
    assert total == a.size
    return pool, {"sum1_s": s, "gbps": a.nbytes / s / 1e9}


def pipeline(tm, nvme, footprint):
    """The tiering suite's pandas pipeline (tieredmem/bench/workloads.py) at `footprint`
    times a 160 MiB budget, its arrays in the pool: the computation's time."""
    import pandas  # noqa: F401 -- imported before the pool, as the suite does
    from tieredmem.bench.workloads import WORKLOADS
    wl, budget = WORKLOADS["pipeline"], 160 * MiB
    params = wl.params(int(footprint * budget), budget)
    pool = tm.Pool(dram=budget, nvme="4GiB", nvme_path=nvme)
    import numpy as np
    with tm.use(pool):
        data = wl.setup(lambda shape, dtype, name: np.empty(shape, dtype), params)
        _, s = timed(lambda: wl.run(data, params))
    return pool, {"compute_s": s}


def case_pipeline_half(tm, np, nvme):
    """The pandas pipeline at half the budget: temporaries freed and made again, nothing spills."""
    return pipeline(tm, nvme, 0.5)


def case_pipeline2x(tm, np, nvme):
    """The pandas pipeline at twice the budget (issue 11's target: at most 1.3x all-DRAM)."""
    return pipeline(tm, nvme, 2.0)


CASES = {"in_budget": case_in_budget, "seq4x": case_seq4x, "fill_sum4x": case_fill_sum4x, "rmw2x": case_rmw2x,
         "two_streams": case_two_streams, "pipeline_half": case_pipeline_half, "pipeline2x": case_pipeline2x}


def run_case(name):
    import numpy as np

    import tieredmem as tm
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as d:
        nvme = os.path.join(d, "nvme")
        os.mkdir(nvme, 0o700)
        pool, out = CASES[name](tm, np, nvme)
        st = pool.stats()
        out.update({k: st[k] for k in COUNTERS if k in st})
        out["engine"] = os.path.dirname(os.path.dirname(tm.__file__))  # the checkout measured
        print(json.dumps({"case": name, **out}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", nargs="?", help="interpreter of the build to compare against")
    ap.add_argument("new", nargs="?", help="interpreter of the build measured")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--case", help=argparse.SUPPRESS)  # one measurement, in the child
    args = ap.parse_args()
    if args.case:
        return run_case(args.case)
    if not (args.old and args.new):
        ap.error("give the two interpreters: OLD_PYTHON NEW_PYTHON")
    cases = args.cases.split(",")
    unknown = set(cases) - set(CASES)
    if unknown:
        ap.error(f"unknown case(s): {', '.join(sorted(unknown))} (known: {', '.join(CASES)})")
    raw = []
    for rnd in range(args.rounds):
        for name in cases:
            order = ("old", "new") if rnd % 2 == 0 else ("new", "old")
            for build in order:
                py = args.old if build == "old" else args.new
                # This file run by path: sys.path then holds its directory, not this
                # checkout, so that `import tieredmem` finds py's own build (with the
                # checkout on sys.path, its package would shadow the other venv's
                # editable install, and both sides would measure this build).
                res = subprocess.run([py, __file__, "--case", name], capture_output=True, text=True, cwd="/")
                line = res.stdout.strip().splitlines()[-1] if res.returncode == 0 and res.stdout.strip() else None
                row = json.loads(line) if line else {"case": name, "error": res.stderr.strip()[-500:]}
                row.update(build=build, round=rnd)
                raw.append(row)
                print(json.dumps(row), flush=True)
    engines = {b: sorted({r["engine"] for r in raw if r["build"] == b and "engine" in r}) for b in ("old", "new")}
    if set(engines["old"]) & set(engines["new"]):
        sys.exit(f"both builds imported tieredmem from {engines['old']}: not an A/B")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_ab.json").write_text(json.dumps({"old": args.old, "new": args.new, "runs": raw}, indent=1))
    lines = [f"old: {', '.join(engines['old'])}; new: {', '.join(engines['new'])}", "",
             "| case | figure | old: median (min-max) | new: median (min-max) | new/old |", "|---|---|---|---|---|"]
    for name in cases:
        rows = [r for r in raw if r["case"] == name and "error" not in r]
        keys = sorted({k for r in rows for k in r if k.endswith("_s") or k == "gbps" or k in COUNTERS})
        for k in keys:
            vals = {b: [r[k] for r in rows if r["build"] == b and k in r] for b in ("old", "new")}
            if not vals["old"] or not vals["new"]:
                continue
            mo, mn = statistics.median(vals["old"]), statistics.median(vals["new"])
            fmt = (lambda v: f"{v:.3f}") if isinstance(mo, float) else str
            ratio = f"{mn / mo:.2f}" if mo else "-"
            lines.append(f"| {name} | {k} | {fmt(mo)} ({fmt(min(vals['old']))}-{fmt(max(vals['old']))}) | "
                         f"{fmt(mn)} ({fmt(min(vals['new']))}-{fmt(max(vals['new']))}) | {ratio} |")
    errors = [r for r in raw if "error" in r]
    for r in errors:
        lines.append(f"\n{r['build']} {r['case']} round {r['round']} failed: {r['error']}")
    (out / "engine_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
