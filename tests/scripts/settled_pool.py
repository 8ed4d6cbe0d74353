"""A process with a pool whose figures have settled, for the tests of what
pools publish: it fills an array three times its DRAM budget, waits until
its statistics stay the same over a whole period of the published rates and
arrays, prints them (with the array's placement and the pool's published
file) as one JSON line, and sleeps until it is killed.

    python settled_pool.py NVME_DIR                 # a pool of its own
    python -m tieredmem run ... settled_pool.py     # the pool `run` installed
"""
import json
import sys
import time

import numpy as np

import tieredmem as tm

PERIOD_S = tm._lib.TM_PUB_PERIOD_MS / 1000
# What hint sampling changes while the process sleeps (`run` samples), and
# what is the process's rather than the pool's.
MOVING = ("rss", "outside_pool", "sampled", "sample_ns", "sample_rate", "hint_faults")

pool = tm.installed() or tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=sys.argv[1], sampling=False,
                                 track_origin=True)
with tm.use(pool):
    a = np.ones(3 * 2**20)  # ORIGIN: 24 MiB


def settled_figures():
    return {k: v for k, v in pool.stats().items() if k not in MOVING}


before = settled_figures()
while True:
    time.sleep(1.2 * PERIOD_S)  # a published period ends in between
    now = settled_figures()
    if now == before:
        break
    before = now
print(json.dumps({"stats": now, "placement": pool.placement(a), "path": pool.published_path}), flush=True)
time.sleep(600)
