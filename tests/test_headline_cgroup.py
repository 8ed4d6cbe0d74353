"""The headline claim: a job that plain numpy cannot run under a hard memory
limit (the kernel OOM-kills it) runs on a tieredmem pool under the same limit,
exactly, with resident pool bytes held to the DRAM budget throughout."""
import json
import textwrap

import pytest

from memcgroup import CgroupUnavailable, run_limited

LIMIT = 640 << 20
DRAM = 256 << 20
BLOCK = 64 << 10
N = 2**28  # int64 elements: 2 GiB
CHUNK = 2**21  # elements written and verified per step (16 MiB)

FILL_AND_VERIFY = """
import numpy as np
N, CHUNK = {N}, {CHUNK}
a = ALLOCATE
for i in range(0, N, CHUNK):
    a[i:i + CHUNK] = np.arange(i, i + CHUNK, dtype=np.int64) * 2654435761
bad = 0
for i in range(0, N, CHUNK):
    bad += int(np.count_nonzero(a[i:i + CHUNK] != np.arange(i, i + CHUNK, dtype=np.int64) * 2654435761))
"""


def job(allocate: str, prologue: str = "", epilogue: str = "") -> str:
    body = FILL_AND_VERIFY.format(N=N, CHUNK=CHUNK).replace("ALLOCATE", allocate)
    return textwrap.dedent(prologue) + body + textwrap.dedent(epilogue)


TIEREDMEM_PROLOGUE = f"""
import json, threading, time
import tieredmem as tm
pool = tm.Pool(dram={DRAM}, nvme="4GiB", nvme_path=NVME_DIR)
peak = [0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], pool.stats()["dram"]["used"])
        time.sleep(0.005)
sampler = threading.Thread(target=sample)
sampler.start()
"""

TIEREDMEM_EPILOGUE = """
done.set()
sampler.join()
st = pool.stats()
print(json.dumps({"bad": bad, "sampled_peak": peak[0], "engine_peak": st["dram"]["peak"],
                  "nvme_used": st["nvme"]["used"], "demotions": st["demotions"]}))
"""


def limited(code: str, **kw):
    try:
        return run_limited(code, limit_bytes=LIMIT, timeout=300, **kw)
    except CgroupUnavailable as exc:
        pytest.skip(f"no memory cgroup can be made here: {exc}")


@pytest.mark.timeout(330)
def test_plain_numpy_is_oom_killed_under_the_limit():
    res = limited(job("np.empty(N, dtype=np.int64)", epilogue="print('survived', bad)"))
    assert res.oom_killed and res.killed_by_sigkill, (res.returncode, res.stderr[-2000:])


@pytest.mark.timeout(330)
def test_pool_runs_the_same_job_exactly_under_the_limit(tmp_path):
    prologue = TIEREDMEM_PROLOGUE.replace("NVME_DIR", repr(str(tmp_path)))
    res = limited(job('pool.empty((N,), dtype="int64")', prologue, TIEREDMEM_EPILOGUE))
    assert res.returncode == 0 and not res.oom_killed, (res.returncode, res.stderr[-2000:])
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["bad"] == 0
    assert out["demotions"] > 0 and out["nvme_used"] > 0
    # Resident bytes never exceed the budget (one block per faulting thread
    # is allowed; this job has one application thread).
    assert out["sampled_peak"] <= DRAM + BLOCK
    assert out["engine_peak"] <= DRAM + BLOCK
