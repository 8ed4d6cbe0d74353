"""Tier files are private and leave nothing behind: created 0600 and unlinked
while open, so a dead process leaves no file in the tier directories."""
import os
import stat

import numpy as np

import tieredmem as tm


def open_files_under(directory):
    """(fd, link target) of this process's descriptors into `directory`."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            out.append((int(fd), target))
    return out


def test_nvme_slot_file_is_unlinked_and_0600(tmp_path):
    with tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=tmp_path) as pool:
        a = pool.full(4 << 20, 7, dtype=np.int64)  # 32 MiB: forces demotion to NVMe
        files = open_files_under(tmp_path)
        assert len(files) == 1
        fd, target = files[0]
        assert target.endswith("(deleted)")
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        assert os.listdir(tmp_path) == []
        assert pool.stats()["nvme"]["used"] > 0
        del a


def test_pmem_file_is_unlinked_and_0600(tmp_path):
    pmem_dir = tmp_path / "pmem"
    pmem_dir.mkdir()
    with tm.Pool(dram="8MiB", pmem="32MiB", nvme=0, pmem_path=pmem_dir) as pool:
        files = open_files_under(pmem_dir)
        assert len(files) == 1
        fd, target = files[0]
        assert target.endswith("(deleted)")
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        assert os.listdir(pmem_dir) == []
        assert pool.stats()["pmem"]["capacity"] == 32 << 20


def test_closing_the_pool_closes_its_tier_files(tmp_path):
    pool = tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=tmp_path)
    assert len(open_files_under(tmp_path)) == 1
    pool.close()
    assert open_files_under(tmp_path) == []
