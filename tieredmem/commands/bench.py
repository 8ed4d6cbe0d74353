"""Benchmark tiering against what users would do instead: all-DRAM numpy, kernel swap, memmap.

    python -m tieredmem bench [--quick] [--scale X] [--out DIR] ...

Runs five workloads (sequential reduce, read-modify-write transform, Zipf
random gather, a pandas preprocessing pipeline, standardize + PCA + least
squares) at footprints of 0.5x to 4x a DRAM budget, on every system side by
side in one run: numpy in DRAM with no limit (the ideal); numpy with kernel
swap to a swap file on the NVMe tier's disk (made and enabled by the
benchmark as root, swapped off and deleted afterwards); numpy.memmap over
files on that disk; and tieredmem with each built-in policy, without and
with a PMEM tier (emulated in DRAM at the speed of --pmem-emulation). Each
repetition runs in a fresh process in its own memory cgroup (limit: what its
interpreter uses + the DRAM budget + --allowance). Answers are checked
against all-DRAM; a system that cannot run is reported with the reason.

Writes DIR/results.json (raw timings, tier stats, the machine and its
measured disk bandwidth), DIR/results.md (tables) and DIR/*.png (matplotlib,
if installed). Sizes: the DRAM budget is --dram, else 4 GiB x --scale;
--quick is scale 1/32 (128 MiB), footprints 0.5x and 2x (4x for the
sequential reduce), one repetition and one tieredmem policy with and without
PMEM, in under 3 minutes. On a 2-core machine the full size (a 4 GiB
budget, footprints up to 16 GiB) takes hours; --dram 160MiB about 20 minutes.

Environment (test hooks): TIEREDMEM_BENCH_FORCE_NO_SWAP=1 (swapon refused),
TIEREDMEM_BENCH_FORCE_NO_CGROUP=1 (no memory cgroup), TIEREDMEM_BENCH_CORRUPT=ID,..
(those systems' answers are perturbed, to show how a wrong answer is reported)."""
import fnmatch
import os
import sys

from ..sizes import format_size, parse_size

QUICK_SCALE = 1 / 32
QUICK_FOOTPRINTS = (0.5, 2.0)
DEFAULT_FOOTPRINTS = (0.5, 1.0, 2.0, 4.0)
QUICK_TM = ("tm-lru", "tm-lru-pmem")


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run in under 3 minutes (see above)")
    parser.add_argument("--scale", type=float, default=None, metavar="X",
                        help="sizes relative to the full run: DRAM budget 4 GiB x X (default 1; --quick: 1/32)")
    parser.add_argument("--dram", metavar="SIZE", default=None,
                        help="the DRAM budget (overrides --scale's): tieredmem's DRAM tier and the basis of the "
                             "cgroup limit and of the footprints")
    parser.add_argument("--out", metavar="DIR", default="tieredmem-bench-results",
                        help="directory for results.json, results.md and the plots (default ./tieredmem-bench-results)")
    parser.add_argument("--nvme-path", metavar="DIR", default=os.path.join("~", ".cache", "tieredmem-bench"),
                        help="directory on the disk for the NVMe tier, memmap files and the swap file "
                             "(default ~/.cache/tieredmem-bench; must not be tmpfs); emptied afterwards")
    parser.add_argument("--reps", type=int, default=None, metavar="N",
                        help="repetitions per system and cell (default 3; --quick: 1)")
    parser.add_argument("--systems", metavar="LIST", default=None,
                        help="comma list of system ids or patterns (numpy, swap, memmap, tm-lru, tm-lru-pmem, "
                             "tm-*, ...); numpy is always run, as the reference")
    parser.add_argument("--workloads", metavar="LIST", default=None,
                        help="comma list: seq_reduce, rmw_transform, zipf_gather, pipeline, pca_lstsq (default all)")
    parser.add_argument("--footprints", metavar="LIST", default=None,
                        help="footprints as multiples of the DRAM budget (default 0.5,1,2,4; --quick: 0.5,2)")
    parser.add_argument("--pmem", metavar="SIZE", default=None,
                        help="PMEM tier of the tieredmem systems with PMEM (default: the DRAM budget)")
    parser.add_argument("--pmem-emulation", metavar="SPEC", default="optane",
                        help="speed of the emulated PMEM tier: optane, cxl or read_ns=..,write_ns=..,read_gbps=..,"
                             "write_gbps=.. (default optane)")
    parser.add_argument("--allowance", metavar="SIZE", default=None,
                        help="memory beyond the DRAM budget in every cgroup limit, for what no system tiers "
                             "(tieredmem's engine buffers, small Python objects); swap and memmap may use it as page "
                             "space (default 32MiB + 1/16 of the budget, at most 64MiB)")
    parser.add_argument("--timeout-factor", type=float, default=None, metavar="X",
                        help="a run times out after --min-timeout + X times the all-DRAM run's wall time "
                             "(default 20; --quick: 10)")
    parser.add_argument("--min-timeout", type=float, default=None, metavar="S",
                        help="seconds (default 30; --quick: 15)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _floats(text, name, parser):
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"{name}: expected numbers separated by commas, got {text!r}")
    if not values or any(not v > 0 for v in values):
        parser.error(f"{name}: expected positive numbers, got {text!r}")
    return sorted(set(values))


def build_config(args, parser):
    from ..bench import suite, systems as sysmod
    from ..bench.workloads import WORKLOADS
    if args.scale is not None and not args.scale > 0:
        parser.error(f"--scale: must be positive, got {args.scale}")
    scale = args.scale if args.scale is not None else (QUICK_SCALE if args.quick else 1.0)
    if args.dram is not None:
        try:
            budget = parse_size(args.dram, "--dram")
        except ValueError as e:
            parser.error(str(e))
        if args.scale is None:
            scale = budget / suite.BUDGET_AT_SCALE_1
    else:
        budget = int(suite.BUDGET_AT_SCALE_1 * scale)
    budget -= budget % (1 << 20)
    if budget < 16 << 20:
        parser.error(f"--dram/--scale: the DRAM budget must be at least 16MiB, got {format_size(budget)}")
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    if reps < 1:
        parser.error(f"--reps: must be at least 1, got {reps}")
    footprints = (_floats(args.footprints, "--footprints", parser) if args.footprints
                  else list(QUICK_FOOTPRINTS if args.quick else DEFAULT_FOOTPRINTS))
    if args.workloads:
        workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
        bad = [w for w in workloads if w not in WORKLOADS]
        if bad or not workloads:
            parser.error(f"--workloads: unknown {', '.join(bad) or '(none given)'} (known: {', '.join(WORKLOADS)})")
    else:
        workloads = list(WORKLOADS)
    policies = list(sysmod.policy_names())
    all_ids = [s.id for s in sysmod.all_systems(policies)]
    skipped = {}
    if args.systems:
        chosen = {"numpy"}
        for pat in (p.strip() for p in args.systems.split(",")):
            if not pat:
                continue
            hits = fnmatch.filter(all_ids, pat)
            if not hits:
                parser.error(f"--systems: {pat!r} matches no system (known: {', '.join(all_ids)})")
            chosen.update(hits)
        selected = [i for i in all_ids if i in chosen]
    else:
        selected = list(all_ids)
        if args.quick:
            for sid in all_ids:
                if sid.startswith("tm-") and sid not in QUICK_TM:
                    skipped[sid] = "left out of --quick (run without --quick, or name it in --systems)"
    try:
        allowance = (parse_size(args.allowance, "--allowance") if args.allowance is not None
                     else min(64 << 20, (32 << 20) + budget // 16))
        pmem = parse_size(args.pmem, "--pmem") if args.pmem is not None else 0
    except ValueError as e:
        parser.error(str(e))
    try:
        from ..pool import parse_pmem_emulation
        parse_pmem_emulation(args.pmem_emulation)
    except ImportError:
        pass
    except (ValueError, TypeError) as e:
        parser.error(f"--pmem-emulation: {e}")
    timeout_factor = args.timeout_factor if args.timeout_factor is not None else (10.0 if args.quick else 20.0)
    if timeout_factor < 0:
        parser.error(f"--timeout-factor: must not be negative, got {timeout_factor}")
    min_timeout = args.min_timeout if args.min_timeout is not None else (15.0 if args.quick else 30.0)
    if min_timeout <= 0:
        parser.error(f"--min-timeout: must be positive, got {min_timeout}")
    nvme_path = os.path.abspath(os.path.expanduser(args.nvme_path))
    try:
        os.makedirs(nvme_path, mode=0o700, exist_ok=True)
    except OSError as e:
        parser.error(f"--nvme-path: cannot create {nvme_path}: {e.strerror}")
    if not os.path.isdir(nvme_path) or not os.access(nvme_path, os.W_OK):
        parser.error(f"--nvme-path: not a writable directory: {nvme_path}")
    why = suite.disk_check(nvme_path)
    if why:
        parser.error(f"--nvme-path: {why}")
    if args.quick and "seq_reduce" in workloads and not args.footprints:
        footprints_extra = {"seq_reduce": 4.0}
    else:
        footprints_extra = {}
    return suite.Config(budget=budget, footprints=footprints, workloads=workloads, systems=selected, reps=reps,
                        nvme_path=nvme_path, allowance=allowance, pmem=pmem, pmem_emulation=args.pmem_emulation,
                        timeout_factor=timeout_factor, min_timeout=min_timeout, quick=args.quick, scale=scale,
                        progress=not args.no_progress, skipped=skipped, policies=policies,
                        extra_footprints=footprints_extra)


def run(args, parser) -> int:
    from ..bench import report, suite
    from ..bench.progress import Progress
    cfg = build_config(args, parser)
    out = os.path.abspath(args.out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        parser.error(f"--out: cannot create {out}: {e.strerror}")
    progress = Progress(0, enabled=cfg.progress)
    print(f"tieredmem bench: DRAM budget {format_size(cfg.budget)}, footprints "
          f"{', '.join(f'{f:g}x' for f in cfg.footprints)}, {cfg.reps} rep(s), workloads {', '.join(cfg.workloads)}; "
          f"data in {cfg.nvme_path}; results in {out}", file=sys.stderr)
    results = suite.Suite(cfg, progress).run()
    progress.close()
    paths = report.write(results, out, plots=not args.no_plots)
    print(report.targets_table(results))
    print()
    for k, p in paths.items():
        print(f"{k}: {p}")
    if (results.get("plots") or {}).get("skipped"):
        print(f"plots {results['plots']['skipped']}")
    wrong = sorted({f"{sid} ({c['workload']} {c['footprint']:g}x)" for c in results["cells"]
                    for sid, rec in c["systems"].items() if rec["state"] == "WRONG"})
    if wrong:
        print("WRONG answers: " + ", ".join(wrong), file=sys.stderr)
    if not results.get("complete"):
        return 130
    return 1 if wrong else 0
