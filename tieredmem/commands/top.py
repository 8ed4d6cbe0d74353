"""Live view of the tieredmem processes of this user: where their pages are.

    python -m tieredmem top [PID ...] [--interval SECONDS]

For every process that runs tieredmem pools (or those named), refreshed each
second: per pool, the bytes in each tier against its capacity, faults,
promotions and demotions per second, MB/s read from and written to the lower
tiers, the share of the time the program waited on faults, the policy; and
the largest arrays with where their bytes are (where the program made them
too, with track_origin / run --track-origins). Ctrl-C quits."""
import time

from .. import published


def add_arguments(parser):
    parser.add_argument("pids", type=int, nargs="*", metavar="PID", help="only these processes (default: all)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between refreshes (default: 1)")


def run(args, parser) -> int:
    if not args.interval > 0:
        parser.error(f"--interval: a number of seconds above 0, got {args.interval}")
    # rich: imported by the commands that draw, not at every `tieredmem run`'s start.
    from rich.console import Console
    from rich.live import Live

    from ..reporters import pools
    pids = args.pids or None
    with Live(console=Console(), screen=True, auto_refresh=False) as live:
        try:
            while True:
                procs = published.processes(pids)
                live.update(pools.view(procs, published.nothing_published(pids)), refresh=True)
                time.sleep(args.interval)
        except KeyboardInterrupt:
            pass
    return 0
