"""Regression (defect 4): an operation that needs several non-resident blocks
at once must make progress when the rest of DRAM is pinned by "hot" advice,
whatever the policy answers.

Pool: DRAM of 4 blocks (64 KiB blocks), sampling off, a 32-block array filled
with a pattern, 3 of its blocks (29, 30, 31: the last filled) advised "hot". Then, between non-resident
blocks: a one-block copy (a[20] = a[10]), a copy across block boundaries
(four blocks involved), ndarray.resize (the pool's realloc: a memcpy of a
non-resident array to new memory), and np.add(x, y, out=z) over three
blocks. The engine livelocked on these under the numba policies (a 64 KiB
copy spun for over 60 s and read 13.6 GB; x + y took 3-17 s). Required, with
lru, fifo, hotness and with an adversarial user policy (its select_victims
always names the most recently faulted blocks first: the worst valid
answer): each completes in under 5 s, the data is exact, and bytes read from
the lower tier stay under 100x the bytes the operation copies. The engine's
guarantee for that: the blocks of in-flight faults are never victims, and
advice cannot pin the last blocks a fault needs.

Each case runs in a child (a watchdog there reports a livelock after 15 s
with the pool's counters)."""
import pytest

from probing import private_dir, run_child

pytestmark = pytest.mark.timeout(120, method="thread")

POLICIES = ["lru", "fifo", "hotness", "adversarial-recent", "adversarial-all"]
OPS = ["copy_block", "copy_across_blocks", "resize", "add_three_blocks"]
LIMIT = 5.0      # seconds the operation may take
WATCH = 15       # the child's watchdog: reports the livelock and exits 4
TIMEOUT = 40     # the whole child
HOT = "29,30,31" # the blocks advised hot: the last ones filled, so already resident

CHILD = r"""
import sys, time
import numpy as np
import tieredmem as tm
from patterns import pattern
from probing import emit, make_policy, stats_summary, watchdog

policy, op, nvme, watch = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
hot = [int(k) for k in sys.argv[5].split(",")]
pool = tm.Pool(dram="256KiB", nvme="256MiB", nvme_path=nvme, policy=make_policy(policy), sampling=0)
bs = pool.block_size
assert bs == 64 << 10 and pool.stats()["dram"]["capacity"] == 4 * bs
per = bs // 8
if op == "resize":
    b = pool.empty(8 * per, dtype=np.uint64)   # allocated first: a, right after it, keeps it from growing in place
    b[:] = pattern(0, b.size, 5)
a = pool.empty(32 * per, dtype=np.uint64)
a[:] = pattern(0, a.size, 7)
want_a = pattern(0, a.size, 7)

def blk(k):
    return a[k * per:(k + 1) * per]

for k in hot:
    pool.advise(blk(k), "hot")
involved = {"copy_block": [blk(10), blk(20)],
            "copy_across_blocks": [a[10 * per:12 * per], a[20 * per:22 * per]],
            "resize": [b] if op == "resize" else [],
            "add_three_blocks": [blk(10), blk(20), blk(30)]}[op]
for v in involved:
    pool.advise(v, "dontneed")
    assert pool.placement(v)["dram"] == 0, (op, "setup: not demoted", pool.placement(v))
before = stats_summary(pool)
print("ready", flush=True)

watchdog(watch, pool, f"{op} under {policy}")
t0 = time.monotonic()
if op == "copy_block":
    a[20 * per:21 * per] = a[10 * per:11 * per]
    copied = bs
elif op == "copy_across_blocks":
    h = per // 2
    a[20 * per + h:21 * per + h] = a[10 * per + h:11 * per + h]
    copied = bs
elif op == "resize":
    old = b.ctypes.data
    b.resize(16 * per, refcheck=False)
    copied = 8 * bs
elif op == "add_three_blocks":
    np.add(blk(10), blk(20), out=blk(30))
    copied = 2 * bs
elapsed = time.monotonic() - t0
after = stats_summary(pool)

# The data, exactly.
if op == "copy_block":
    want_a[20 * per:21 * per] = want_a[10 * per:11 * per]
elif op == "copy_across_blocks":
    want_a[20 * per + h:21 * per + h] = want_a[10 * per + h:11 * per + h]
elif op == "add_three_blocks":
    want_a[30 * per:31 * per] = want_a[10 * per:11 * per] + want_a[20 * per:21 * per]
exact = bool(np.array_equal(a, want_a))
if op == "resize":
    exact = exact and bool(np.array_equal(b[:8 * per], pattern(0, 8 * per, 5))) and not b[8 * per:].any()
emit({"policy": policy, "op": op, "seconds": elapsed, "copied": copied, "exact": exact,
      "moved": op != "resize" or b.ctypes.data != old,
      "bytes_read": after["bytes_read"] - before["bytes_read"],
      "promotions": after["promotions"] - before["promotions"], "before": before, "after": after})
"""


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("policy", POLICIES)
def test_operation_on_non_resident_blocks_with_dram_pinned_hot_completes_promptly(tmp_path, policy, op):
    res = run_child(CHILD, policy, op, private_dir(tmp_path / "nvme"), WATCH, HOT, timeout=TIMEOUT)
    assert "ready" in res.stdout, f"the setup failed:\n{res}"
    assert not res.hung(), f"{op} under {policy} livelocked:\n{res}"
    assert res.returncode == 0 and res.result, f"\n{res}"
    r = res.result
    assert r["exact"], f"{op} under {policy}: wrong data\n{r}"
    assert r["seconds"] < LIMIT, f"{op} under {policy} took {r['seconds']:.1f} s\n{r}"
    assert r["bytes_read"] < 100 * r["copied"], (f"{op} under {policy} read {r['bytes_read']} bytes from the "
                                                 f"lower tier to copy {r['copied']}\n{r}")
