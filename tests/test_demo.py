"""`tieredmem demo` answers, read cold: how much memory did this take against
plain numpy, how much slower was it, and where did the data go."""
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120, method="thread")

SIZES = ("--size", "96MiB", "--dram", "16MiB", "--nvme", "256MiB")


def demo(nvme_dir, *extra):
    res = subprocess.run([sys.executable, "-m", "tieredmem", "demo", *SIZES, "--nvme-path", str(nvme_dir), *extra],
                         capture_output=True, text=True, timeout=110)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    d = tmp_path_factory.mktemp("nvme")
    d.chmod(0o700)
    return demo(d)


def mib(text):
    value, unit = text.split()
    return float(value) * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[unit]


def test_it_gives_numpys_time_and_peak_memory_and_tieredmems_against_them(output):
    out = output
    plain = re.search(r"plain numpy \(all in memory\): fill [\d.]+ s, sum [\d.]+ s, peak memory ([\d.]+ \w+)", out)
    tiered = re.search(r"tieredmem, DRAM budget 16.0 MiB, NVMe 256.0 MiB: fill [\d.]+ s \([\d.]+x numpy's\), "
                       r"sum [\d.]+ s \([\d.]+x\), peak memory ([\d.]+ \w+) \([\d.]+x\)", out)
    assert plain and tiered, out
    assert mib(tiered.group(1)) < mib(plain.group(1)) - 48, out  # the 96 MiB array was mostly below DRAM


def test_it_says_where_the_array_went_and_that_the_sums_were_exact(output):
    out = output
    where = re.search(r"where the array ended up: dram ([\d.]+ \w+), nvme ([\d.]+ \w+)", out)
    assert where, out
    assert mib(where.group(1)) <= 16 and mib(where.group(1)) + mib(where.group(2)) == pytest.approx(96, abs=1)
    assert "sums: exact in both" in out


def test_it_explains_each_count(output):
    out = output
    for line in ("faults", "promotions", "demotions"):
        assert re.search(rf"^  {line} \d+: \w", out, re.M), out


def test_an_emulated_pmem_tier_is_said_to_be_ram(nvme_dir):
    out = demo(nvme_dir, "--pmem", "16MiB")
    assert "the emulated PMEM tier, which is a file in /dev/shm: RAM, not persistent memory" in out
    assert re.search(r"where the array ended up: dram [\d.]+ \w+, pmem [\d.]+ \w+, nvme", out), out
