"""Host groups: tieredmem processes that share one DRAM budget, divided every
period by what more DRAM is measured to be worth to each (docs/sharing.md).

    pool = tm.Pool(share=tm.Share("etl", host_dram="8GiB", floor="1GiB"))
    python -m tieredmem run --share etl --host-dram 8GiB job.py

No daemon: the members coordinate through a small table in /dev/shm
(table.py); each measures its own curve (benefit.py, over csrc/ghost.c) and
any of them arbitrates (arbiter.py) for the group once a period (member.py)."""
from .member import ENV, Share, settings
from .table import names, status

__all__ = ["ENV", "Share", "names", "settings", "status"]
