"""Shared fixtures: small pools whose NVMe tier lives in a per-test directory."""
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
def pool(nvme_dir):
    """Factory: pool(**kwargs) -> an open tm.Pool (small by default, NVMe in
    nvme_dir), closed at teardown. Tests delete their arrays themselves."""
    made = []

    def make(**kwargs):
        kwargs.setdefault("dram", "8MiB")
        kwargs.setdefault("nvme", "64MiB")
        kwargs.setdefault("nvme_path", nvme_dir)
        p = tm.Pool(**kwargs)
        made.append(p)
        return p

    yield make
    gc.collect()
    for p in made:
        p.close()
