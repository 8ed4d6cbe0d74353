"""`tieredmem doctor` reports what is true of this machine, and says a
machine where tieredmem cannot run is not ready, naming the fix."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

THP = pathlib.Path("/sys/kernel/mm/transparent_hugepage")


def doctor(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDMEM_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "tieredmem", "doctor", *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


def findings(res):
    report = json.loads(res.stdout)
    return report, {f["check"]: f for f in report["findings"]}


def selected(mode_line):
    return mode_line.split("[", 1)[1].split("]", 1)[0]


@pytest.fixture
def report(nvme_dir):
    res = doctor("--nvme-path", str(nvme_dir), "--json", "--no-bandwidth")
    return res, *findings(res)


def test_this_machine_is_ready_and_the_exit_status_says_so(report):
    res, data, _ = report
    assert res.returncode == 0, res.stdout
    assert data["ready"] is True


def test_userfaultfd_is_reported_usable_here(report):
    _, _, by_check = report
    assert by_check["userfaultfd"]["status"] == "ok", by_check["userfaultfd"]


def test_the_shared_memory_huge_page_mode_is_the_one_found_in_sysfs(report):
    _, _, by_check = report
    mode = selected((THP / "shmem_enabled").read_text())
    f = by_check["shared-memory huge pages"]
    assert f["found"].endswith(f"shmem_enabled is {mode}")
    assert f["status"] == ("warning" if mode in ("never", "deny") else "ok")


def test_o_direct_is_reported_working_on_this_disk(report):
    _, _, by_check = report
    assert by_check["O_DIRECT"]["status"] == "ok", by_check["O_DIRECT"]


def test_a_denied_userfaultfd_is_not_ready_and_names_the_three_ways_to_grant_it(nvme_dir):
    res = doctor("--nvme-path", str(nvme_dir), "--json", "--no-bandwidth", env={"TIEREDMEM_FORCE_NO_UFFD": "1"})
    data, by_check = findings(res)
    assert res.returncode == 1 and data["ready"] is False
    f = by_check["userfaultfd"]
    assert f["status"] == "failure"
    for way in ("vm.unprivileged_userfaultfd=1", "/dev/userfaultfd", "CAP_SYS_PTRACE"):
        assert way in f["fix"], f["fix"]


def test_an_nvme_directory_on_tmpfs_is_a_failure_saying_it_is_ram(tmp_path):
    shm = pathlib.Path("/dev/shm") / f"tieredmem-doctor-{os.getpid()}"
    shm.mkdir(mode=0o700)
    try:
        res = doctor("--nvme-path", str(shm), "--json", "--no-bandwidth")
    finally:
        shm.rmdir()
    data, by_check = findings(res)
    assert res.returncode == 1
    f = by_check["NVMe tier directory"]
    assert f["status"] == "failure" and "tmpfs" in f["found"] and "RAM" in f["why"]


def test_an_nvme_directory_others_can_write_is_a_failure(nvme_dir):
    nvme_dir.chmod(0o777)
    res = doctor("--nvme-path", str(nvme_dir), "--json", "--no-bandwidth")
    _, by_check = findings(res)
    assert res.returncode == 1
    assert by_check["NVMe tier directory"]["status"] == "failure"
    assert "mode 777" in by_check["NVMe tier directory"]["found"]


def test_the_disk_bandwidth_is_measured_in_a_few_seconds(nvme_dir):
    res = doctor("--nvme-path", str(nvme_dir), "--json")
    _, by_check = findings(res)
    f = by_check["disk bandwidth"]
    assert f["status"] == "ok", f
    assert "GB/s" in f["found"]
    assert list(nvme_dir.iterdir()) == []  # its probe file is gone


def test_the_text_report_shows_each_finding_and_the_verdict(nvme_dir):
    res = doctor("--nvme-path", str(nvme_dir), "--no-bandwidth")
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert any(line.startswith("[     ok] userfaultfd:") for line in lines), res.stdout
    assert lines[-1] == "ready: tieredmem can run here"


def test_the_memory_cgroups_limit_is_the_one_the_process_runs_under(nvme_dir):
    from memcgroup import run_limited
    code = ("import json, sys; from tieredmem.commands import doctor; "
            f"print(json.dumps(doctor.diagnose({str(nvme_dir)!r}, bandwidth=False)))")
    res = run_limited(code, limit_bytes=768 << 20, timeout=120)
    assert res.returncode == 0, res.stderr
    by_check = {f["check"]: f for f in json.loads(res.stdout)["findings"]}
    assert "limit 768.0 MiB" in by_check["memory limit"]["found"], by_check["memory limit"]
