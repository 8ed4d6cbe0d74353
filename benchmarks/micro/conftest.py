"""Fixtures of the micro-benchmarks: pools whose NVMe tier is in a private
directory on the disk (~/.cache/tieredmem-bench/micro-*, removed afterwards),
not in /tmp, which may be tmpfs."""
import gc
import os
import shutil
import tempfile

import pytest

import tieredmem as tm


@pytest.fixture
def nvme_dir():
    base = os.path.expanduser(os.environ.get("TIEREDMEM_BENCH_NVME_PATH", "~/.cache/tieredmem-bench"))
    os.makedirs(base, mode=0o700, exist_ok=True)
    d = tempfile.mkdtemp(prefix="micro-", dir=base)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_pool(nvme_dir):
    made = []

    def make(**kw):
        kw.setdefault("nvme_path", nvme_dir)
        pool = tm.Pool(**kw)
        made.append(pool)
        return pool

    yield make
    gc.collect()
    for pool in made:
        pool.close()
