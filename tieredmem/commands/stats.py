"""One snapshot of the pools of a running tieredmem process.

    python -m tieredmem stats PID [--json]

Prints what `tieredmem top` shows for the process, once: per pool, the
bytes in each tier against its capacity, the engine's rates over its last
second, and the largest arrays; --json prints the figures as data (the
counters as pool.stats() gives them, "rates" per second, "arrays")."""
import json
import sys

from rich.console import Console

from .. import published
from ..reporters import pools


def add_arguments(parser):
    parser.add_argument("pid", type=int, help="the process")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def nothing_published(pids) -> str:
    """Why no pool was found for `pids` (None: any process of this user)."""
    who = "no process of this user" if pids is None else "no process " + ", ".join(map(str, pids))
    return (f"{who} publishes tieredmem pools (they publish unless created with publish=False or "
            f"TIEREDMEM_PUBLISH=0)")


def run(args, parser) -> int:
    procs = published.processes([args.pid])
    if not procs:
        print(f"tieredmem stats: {nothing_published([args.pid])}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(procs[0], sys.stdout, indent=1)
        print()
    else:
        Console().print(pools.process(procs[0]))
    return 0
