"""benchmarks/bench_engine.py's seq_read_nvme scenario (issue 11's targets) at a
tiny size: every system is measured or reported "not run: <reason>", never
given figures it did not measure; each tieredmem figure is divided by the
disk's ceiling and by numpy.memmap's against the targets; the engine's
counters are reported per pass against the optimum. The figures themselves
are the benchmark's business, not asserted here."""
import shutil
import tempfile
from pathlib import Path

import pytest

import tieredmem as tm
from benchmarks import bench_engine, common
from tieredmem.bench import cgroup

DRAM = 8 * common.MiB


@pytest.fixture
def workdir():
    """A private directory where the benchmark puts its files by default: on a
    disk, as O_DIRECT needs (tmp_path may be tmpfs)."""
    common.DEFAULT_NVME_DIR.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="test-", dir=common.DEFAULT_NVME_DIR))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def rows_of(result, system):
    return {row["metric"]: row for row in result["rows"] if row["system"] == system}


def test_seq_read_measures_every_system_against_the_targets(workdir, tmp_path):
    result = bench_engine.bench_seq_read(tm, None, DRAM, 1, workdir)
    status = {name: record["status"] for name, record in result["systems"].items()}
    try:
        cgroup.find_location()
    except cgroup.CgroupUnavailable:
        assert status.pop("memmap").startswith("not run: no memory cgroup")
    assert set(status.values()) == {"ok"}, status
    assert result["params"]["optimum_read_bytes"] == 3 * DRAM
    for system, ratios in bench_engine.RATIOS.items():
        rows = rows_of(result, system)
        for name, label in bench_engine.PASSES.items():
            assert rows[f"{label} (GB/s)"]["median"] > 0
            for baseline, target in ratios:
                row = rows[f"{label} / {baseline}"]
                if target is not None and "ratio" in row:
                    assert row["target"] == f"{target[0]} {target[1]}" and row["met"] in ("yes", "no")
            read = rows[f"{label}: {bench_engine.PASS_COUNTERS[0][1]}"]
            # A hard DRAM budget: every pass reads at least what DRAM cannot hold.
            assert read["ratio"] >= 1.0, (system, name, read)
            run = result["systems"][system]["runs"][0]
            assert {f"stats_after_{name}", f"{name}_faults", f"{name}_readahead"} <= run.keys()
    common.write_json(tmp_path / "engine.json", result)  # the report's raw figures serialize


def test_seq_read_reports_what_did_not_run(workdir, monkeypatch):
    monkeypatch.setenv(cgroup.FORCE_ENV, "1")
    result = bench_engine.bench_seq_read(None, "no engine here", DRAM, 1, workdir)
    systems = result["systems"]
    assert systems["ceiling"]["status"] == "ok"
    assert systems["memmap"] == {"status": f"not run: no memory cgroup: forced by {cgroup.FORCE_ENV}", "runs": []}
    for system in bench_engine.RATIOS:
        assert systems[system] == common.not_run("no engine here")
        assert rows_of(result, system) == {"not run: no engine here": {"system": system,
                                                                        "metric": "not run: no engine here"}}
    assert rows_of(result, "memmap")[systems["memmap"]["status"]]["system"] == "memmap"
