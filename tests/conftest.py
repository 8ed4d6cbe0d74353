"""Shared fixtures: pools whose NVMe tier lives in a per-test directory."""
import functools
import gc

import pytest

import tieredmem as tm


@pytest.fixture
def nvme_dir(tmp_path):
    """A fresh, empty directory for a pool's NVMe slot file."""
    d = tmp_path / "nvme"
    d.mkdir()
    return d


@pytest.fixture
def make_pool(nvme_dir):
    """Factory: make_pool(**kwargs) -> an open tm.Pool with its NVMe tier in
    nvme_dir, closed at teardown. Tests delete their arrays themselves."""
    made = []

    def make(**kwargs):
        kwargs.setdefault("nvme_path", nvme_dir)
        p = tm.Pool(**kwargs)
        made.append(p)
        return p

    yield make
    gc.collect()
    for p in made:
        p.close()


@pytest.fixture
def pool(make_pool):
    """Factory for small pools: 8 MiB of DRAM over 64 MiB of NVMe by default."""
    return functools.partial(make_pool, dram="8MiB", nvme="64MiB")
