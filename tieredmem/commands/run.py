"""Run a Python program with a tiered pool installed as numpy's allocator.

    python -m tieredmem run [options] (script.py | -m module) [args...]

Like `python -m cProfile`: the program runs in this interpreter as __main__,
with its own sys.argv, exit code and traceback. The C library's allocations
of at least the threshold go to the pool too, and pymalloc's arenas (Python's
small objects) (docs/malloc.md): for that, run
re-executes the interpreter once with a malloc interposer preloaded, keeping
the process, its argv and its environment. Every option also reads an
environment variable (TIEREDMEM_DRAM, TIEREDMEM_PMEM, ...); options win."""
import argparse
import json
import os
import runpy
import sys
import threading
import time

import psutil

from .. import malloc, numpy_alloc
from ..bench import cgroup
from ..pool import Pool, default_nvme_dir, default_nvme_size, parse_pmem_emulation, policy_names
from ..sharing import Share
from ..sizes import format_size, parse_size

OPTIONS = (  # option, environment variable, help
    ("--dram", "TIEREDMEM_DRAM", "DRAM budget (default: 25%% of available memory, or of the memory cgroup limit when lower)"),
    ("--pmem", "TIEREDMEM_PMEM", "PMEM tier size (default: none)"),
    ("--nvme", "TIEREDMEM_NVME", "NVMe tier size (default: free disk space of --nvme-path less 10%%)"),
    ("--pmem-path", "TIEREDMEM_PMEM_PATH", "directory for the PMEM file (default: a DAX mount, else /dev/shm)"),
    ("--nvme-path", "TIEREDMEM_NVME_PATH", "directory for the NVMe slot file (default: ~/.cache/tieredmem)"),
    ("--threshold", "TIEREDMEM_THRESHOLD", "smallest allocation placed in the pool (default: 1MiB)"),
    ("--block-size", "TIEREDMEM_BLOCK_SIZE", "placement unit, a power of two from 4KiB to 2MiB (default: 64KiB)"),
    ("--policy", "TIEREDMEM_POLICY", "placement policy: lru, fifo or hotness (default: lru; docs/policies.md)"),
    ("--pmem-emulation", "TIEREDMEM_PMEM_EMULATION", "emulated PMEM speed: optane, cxl or read_ns=..,read_gbps=.."),
    ("--stats", "TIEREDMEM_STATS", "write the pool's statistics to this file as JSON at exit, with its live "
     "arrays (\"arrays\": pool.report())"),
    ("--metrics-port", "TIEREDMEM_METRICS_PORT", "serve Prometheus metrics of the pool on this port "
     "(tieredmem.metrics; on --metrics-addr)"),
    ("--metrics-addr", "TIEREDMEM_METRICS_ADDR", "the address --metrics-port listens on (default: 127.0.0.1, "
     "this machine only)"),
    ("--pymalloc-floor", "TIEREDMEM_PYMALLOC_FLOOR", "Python's first SIZE of small-object arenas (the "
     "interpreter's own working set) stay outside the pool (default: 64MiB)"),
    ("--share", "TIEREDMEM_SHARE", "share a host group's DRAM with the other processes that name it, moved every "
     "period to where it helps most (docs/sharing.md); instead of --dram"),
    ("--host-dram", "TIEREDMEM_HOST_DRAM", "the host group's DRAM (its first member gives it)"),
    ("--share-floor", "TIEREDMEM_SHARE_FLOOR", "the least of the group's DRAM this job keeps (default: 16 blocks)"),
    ("--share-ceiling", "TIEREDMEM_SHARE_CEILING", "the most of the group's DRAM this job takes (default: all)"),
    ("--share-weight", "TIEREDMEM_SHARE_WEIGHT", "this job's weight in the group: its share and its benefit "
     "count that many times (default: 1)"),
    ("--share-period", "TIEREDMEM_SHARE_PERIOD", "seconds between the group's arbitrations (default: 3; the "
     "group's first member sets it)"),
)
METAVARS = {"--stats": "PATH", "--policy": "NAME", "--pmem-emulation": "SPEC", "--metrics-port": "PORT",
            "--metrics-addr": "ADDR", "--share": "NAME", "--share-weight": "W", "--share-period": "SECONDS"}
SIZES = ("dram", "pmem", "nvme", "threshold", "block_size")
# Set across the re-exec that preloads the interposer, so that it happens once:
# "" if LD_PRELOAD was unset, else "=" and its value. Removed, and LD_PRELOAD
# restored, before the program starts: it and its children see the
# environment they would see directly.
REEXEC_MARK = "TIEREDMEM_REEXEC_PRELOAD_WAS"


def add_arguments(parser):
    for option, env, text in OPTIONS:
        parser.add_argument(option, metavar=METAVARS.get(option, "PATH" if "path" in option else "SIZE"),
                            default=os.environ.get(env), help=f"{text}; env {env}")
    parser.add_argument("--quiet", action="store_true", default=os.environ.get("TIEREDMEM_QUIET", "") not in ("", "0"),
                        help="no summary on stderr at exit; env TIEREDMEM_QUIET=1")
    parser.add_argument("--no-malloc", action="store_true", default=os.environ.get("TIEREDMEM_MALLOC", "") == "0",
                        help="leave the C library's allocations (malloc) outside the pool; env TIEREDMEM_MALLOC=0")
    parser.add_argument("--no-pymalloc", action="store_true",
                        default=os.environ.get("TIEREDMEM_PYMALLOC", "") == "0",
                        help="leave Python's small objects (pymalloc's arenas) outside the pool (--no-malloc does "
                             "too); env TIEREDMEM_PYMALLOC=0")
    parser.add_argument("--track-origins", action="store_true",
                        default=os.environ.get("TIEREDMEM_TRACK_ORIGINS", "") not in ("", "0"),
                        help="record where the program makes each array of at least the threshold, for top and "
                             "--stats (Pool(track_origin=True)); env TIEREDMEM_TRACK_ORIGINS=1")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a library module as a script")
    parser.add_argument("program", nargs=argparse.REMAINDER, help="script.py [args...] (or the module's args)")


def split_argv(argv):
    """(run's own options, the program's part): the program starts at -m or at
    the first argument that is not an option, so that its own options (even
    --help) are left to it, as `python -m cProfile` does."""
    takes_value = {option for option, _, _ in OPTIONS}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return argv[:i], argv[i + 1:]
        if a == "-m" or not a.startswith("-"):
            return argv[:i], argv[i:]
        i += 2 if a in takes_value else 1
    return argv, []


def default_dram() -> int:
    base = psutil.virtual_memory().available
    limit, _ = cgroup.own_limit()
    if limit is not None:
        base = min(base, limit)
    return base // 4


def check_dram(dram, raw, bs, parser):
    """Refuse a budget that cannot hold a block; warn of one the machine (or
    the memory cgroup) cannot hold, since it would not keep the job within it."""
    if dram < bs:
        parser.error(f"--dram: {raw} is less than one {format_size(bs)} block; give a budget of at least "
                     f"a block (a few MiB or more to be useful)")
    memory, where = psutil.virtual_memory().total, "this machine's memory"
    limit, _ = cgroup.own_limit()
    if limit is not None and limit < memory:
        memory, where = limit, "the memory cgroup's limit"
    if dram > memory:
        print(f"tieredmem: warning: --dram {raw} is more than {where} ({format_size(memory)}): the job can "
              f"still run out of memory before the budget is reached", file=sys.stderr)


def pool_settings(args, parser) -> dict:
    values = {}
    for name in SIZES:
        raw = getattr(args, name)
        if raw is not None:
            try:
                values[name] = parse_size(raw, "--" + name.replace("_", "-"))
            except ValueError as e:
                parser.error(str(e))
    nvme_path = args.nvme_path or str(default_nvme_dir())
    if not os.path.isdir(nvme_path):
        parser.error(f"--nvme-path: not a directory: {nvme_path}")
    bs = values.get("block_size", 64 << 10)
    if not (4 << 10) <= bs <= (2 << 20) or bs & (bs - 1):
        parser.error(f"--block-size: must be a power of two from 4KiB to 2MiB, got {args.block_size}")
    policy = args.policy or "lru"
    if policy not in policy_names():
        parser.error(f"--policy: unknown policy {policy!r} (one of: {', '.join(policy_names())})")
    emulation = None
    if args.pmem_emulation:
        try:
            emulation = parse_pmem_emulation(args.pmem_emulation)
        except ValueError as e:
            parser.error(f"--pmem-emulation: {e}")
        if not values.get("pmem"):
            parser.error("--pmem-emulation: needs a PMEM tier (--pmem SIZE)")
    share = share_settings(args, parser, "dram" in values)
    if "dram" in values:
        check_dram(values["dram"], args.dram, bs, parser)
    dram = None if share else values.get("dram", default_dram())
    nvme = values["nvme"] if "nvme" in values else default_nvme_size(nvme_path)
    return dict(dram=dram and max(dram - dram % bs, bs), pmem=values.get("pmem", 0), nvme=nvme - nvme % bs,
                pmem_path=args.pmem_path, nvme_path=nvme_path, block_size=bs,
                threshold=values.get("threshold", 1 << 20), policy=policy, pmem_emulation=emulation,
                track_origin=args.track_origins, share=share)


SHARE_OPTIONS = ("host_dram", "share_floor", "share_ceiling", "share_weight", "share_period")


def share_settings(args, parser, dram_given: bool):
    """The host group the job joins (a tieredmem.Share), or None; the pool
    checks its values."""
    if not args.share:
        given = [f"--{o.replace('_', '-')}" for o in SHARE_OPTIONS if getattr(args, o) is not None]
        if given:
            parser.error(f"{', '.join(given)}: only with --share NAME (a host group)")
        return None
    if dram_given:
        parser.error("--dram: a job in a host group (--share) gets its DRAM from the group; give --share-floor "
                     "and --share-ceiling instead")
    return Share(args.share, args.host_dram, args.share_floor, args.share_ceiling, args.share_weight,
                 args.share_period)


def metrics_port(args, parser):
    """--metrics-port as a port number, or None."""
    if args.metrics_port is None:
        return None
    if not args.metrics_port.isdigit() or not 0 < int(args.metrics_port) < 65536:
        parser.error(f"--metrics-port: a port number from 1 to 65535, got {args.metrics_port!r}")
    return int(args.metrics_port)


def _user_traceback(exc):
    """The exception's traceback without this module's and runpy's frames."""
    tb = exc.__traceback__
    skip = (__file__, runpy.__file__, "<frozen runpy>")
    while tb is not None and tb.tb_frame.f_code.co_filename in skip:
        tb = tb.tb_next
    return tb


def run_program(args, finished: dict) -> int:
    """Run the script or module as __main__; return its exit code. If it
    returns, its globals are left in `finished`, so that the arrays it kept
    are still alive for the report."""
    try:
        if args.module:
            sys.argv = [args.module] + args.program
            finished.update(runpy.run_module(args.module, run_name="__main__", alter_sys=True))
        else:
            script = args.program[0]
            sys.argv = list(args.program)
            sys.path[0] = os.path.dirname(os.path.abspath(script))
            finished.update(runpy.run_path(script, run_name="__main__"))
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        raise  # after the summary, Python ends the process as it would
    except BaseException as e:  # noqa: BLE001 -- reported as Python would
        tb = _user_traceback(e)
        sys.excepthook(type(e), e.with_traceback(tb), tb)
        return 1
    return 0


def wait_for_threads():
    """Join the program's non-daemon threads, as Python does before exiting."""
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()


def summary(stats: dict, elapsed: float) -> str:
    peaks = ", ".join(f"{t} {format_size(stats[t]['peak'])}" for t in ("dram", "pmem", "nvme"))
    return (f"tieredmem: {elapsed:.1f} s; peak {peaks}; faults {stats['faults']}, "
            f"promotions {stats['promotions']}, demotions {stats['demotions']}; "
            f"{stats['fault_ns'] / 1e9:.2f} s waiting on faults; "
            f"resident outside the pool {format_size(stats['outside_pool'])}" +
            (f"; malloc: {stats['malloc']['allocations']} allocations in the pool" if stats["malloc"] else "") +
            (f"; pymalloc: {stats['pymalloc']['pool']} arenas in the pool" if stats.get("pymalloc") else ""))


def restore_environment() -> bool:
    """Undo what the re-exec added to the environment (the marker, LD_PRELOAD);
    True if this is the re-executed process."""
    was = os.environ.pop(REEXEC_MARK, None)
    if was is None:
        return False
    if was:
        os.environ["LD_PRELOAD"] = was[1:]
    else:
        os.environ.pop("LD_PRELOAD", None)
    return True


def preload_interposer(quiet, reexecuted) -> bool:
    """Make sure the malloc interposer is in this process: unless this is the
    re-executed process or it is preloaded already, re-execute the interpreter
    with it in LD_PRELOAD (this does not return). Returns whether it is
    loaded; says once on stderr (unless quiet) why not."""
    if malloc.loaded():
        return True
    path = malloc.library_path()
    if reexecuted:
        reason = "the dynamic loader did not preload it"
    elif path is None:
        reason = "it is not built (make build)"
    else:
        old = os.environ.get("LD_PRELOAD")
        env = dict(os.environ, LD_PRELOAD=f"{path}:{old}" if old else str(path))
        env[REEXEC_MARK] = "" if old is None else "=" + old
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            # argv[0] is the interpreter's path: Python finds its prefix (a venv) from it.
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
        except OSError as e:
            reason = f"cannot re-execute {sys.executable}: {e}"
    if not quiet:
        print(f"tieredmem: the malloc interposer is off ({reason}); only numpy's allocations go to the pool",
              file=sys.stderr)
    return False


def run(args, parser) -> int:
    if not args.module and not args.program:
        parser.error("give a script to run, or -m MODULE")
    if not args.module and not os.path.isfile(args.program[0]):
        parser.error(f"no such script: {args.program[0]}")
    reexecuted = restore_environment()
    interposer = not args.no_malloc and preload_interposer(args.quiet, reexecuted)
    settings = pool_settings(args, parser)
    port = metrics_port(args, parser)
    try:
        floor = parse_size(args.pymalloc_floor or malloc.PYMALLOC_FLOOR, "--pymalloc-floor")
    except ValueError as e:
        parser.error(str(e))
    try:
        pool = Pool(**settings)
    except (ValueError, OSError, MemoryError) as e:  # MemoryError: its host group made no room for it
        parser.error(str(e))
    if port is not None:
        from .. import metrics  # prometheus_client: only when asked for
        try:
            metrics.serve(port, addr=args.metrics_addr or "127.0.0.1")
        except OSError as e:
            parser.error(f"--metrics-port: cannot serve on {args.metrics_addr or '127.0.0.1'}:{port}: {e.strerror}")
    stats_path = os.path.abspath(args.stats) if args.stats else None  # the program may chdir
    numpy_alloc.install(pool)
    if interposer:
        # Python's small objects too (pymalloc's arenas, which Python maps
        # itself): docs/malloc.md.
        malloc.attach(pool, arenas=not args.no_pymalloc, arena_floor=floor)
        # Arrow C++ allocates some buffers (the Parquet reader's and writer's)
        # from its own default pool, which pyarrow cannot set: with the system
        # allocator's, they are mallocs, and the interposer places the large
        # ones. Read when Arrow first allocates, so set before the program runs.
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    start = time.perf_counter()
    finished = {}
    try:
        code = run_program(args, finished)
        wait_for_threads()
    finally:
        report(pool, settings, start, args.quiet, stats_path, locals().get("code"))
    return code


def report(pool, settings, start, quiet, stats_path, code):
    """The exit summary on stderr and the --stats file."""
    elapsed = time.perf_counter() - start
    stats = pool.stats()
    stats["malloc"] = malloc.counts() if malloc.loaded() else None
    arenas = malloc.arena_counts()
    stats["pymalloc"] = arenas if arenas["installed"] else None
    if not quiet:
        print(summary(stats, elapsed), file=sys.stderr)
    if code and stats["last_error"].startswith("cannot allocate"):
        # numpy reports only "Unable to allocate": say it was the pool, and what to raise.
        print(f"tieredmem: the pool refused an allocation: {stats['last_error']}. Give it more room with "
              f"--nvme (disk), or --dram / --pmem", file=sys.stderr)
    if stats_path:
        with open(stats_path, "w") as f:
            json.dump({"elapsed_s": elapsed, "exit_code": code, "settings": settings, **stats,
                       "arrays": pool.report()}, f, indent=1, default=str)
    sys.stdout.flush()
