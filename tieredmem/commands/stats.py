"""One snapshot of the pools of a running tieredmem process.

    python -m tieredmem stats PID [--json]

Prints what `tieredmem top` shows for the process, once: per pool, the
bytes in each tier against its capacity, the engine's rates over its last
second, and the largest arrays; --json prints the figures as data (the
counters as pool.stats() gives them, "rates" per second, "arrays")."""
import json
import sys

from .. import published


def add_arguments(parser):
    parser.add_argument("pid", type=int, help="the process")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args, parser) -> int:
    procs = published.processes([args.pid])
    if not procs:
        print(f"tieredmem stats: {published.nothing_published([args.pid])}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(procs[0], sys.stdout, indent=1)
        print()
    else:
        from rich.console import Console  # rich: imported by the commands that draw (top.py)

        from ..reporters import pools
        Console().print(pools.process(procs[0]))
    return 0
