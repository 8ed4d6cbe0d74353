"""Dask workers on tiered memory (tieredmem/dask.py, docs/dask.md).

LocalClusters of two single-threaded worker processes with a 1 GiB memory
limit, as in issue 14. "Plain fails" relies on Dask's own guard: the nanny
restarts a worker whose RSS passes 95% of its limit, and with no allowed
failures the task fails with KilledWorker. A memory cgroup would also kill
it, but Dask's monitor is what its users meet, and it measures the same RSS
the pool has to keep within bounds (cgroups are v1 here; docs/dask.md)."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import dask
import numpy as np
import pytest
from distributed import Client, KilledWorker, LocalCluster, wait

import tieredmem.dask as tmd

pytestmark = pytest.mark.timeout(180, method="thread")

GiB = 1 << 30
LIMIT = "1GiB"
N = 160_000_000  # float64: 1.28 GB per array, two per task


def intermediates(seed):
    """A task whose intermediates are 2.56 GB, 2.4x the worker's limit."""
    a = np.random.default_rng(seed).random(N)
    b = np.sqrt(a) * 2.0
    return float(a.sum()), float(b[::1000].sum())


def hold(nbytes):
    """A result held in worker memory."""
    return np.ones(nbytes // 8)


def cluster(**kwargs):
    return LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=LIMIT, dashboard_address=":0",
                        worker_dashboard_address=":0", **kwargs)


@pytest.fixture
def no_retries():
    """A task whose worker dies fails at once (KilledWorker), not after three tries."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        yield


@pytest.fixture(scope="module")
def client():
    """Two workers with the plugin's defaults (DRAM half the limit, NVMe in the
    worker's directory)."""
    with cluster() as c, Client(c) as cl:
        cl.register_plugin(tmd.TieredMemory())
        yield cl


def test_plain_workers_are_killed_by_tasks_larger_than_their_limit(no_retries):
    with cluster() as c, Client(c) as cl:
        with pytest.raises(KilledWorker):
            cl.gather(cl.map(intermediates, [1, 1], pure=False))


def test_plugin_completes_tasks_larger_than_the_limit_with_the_plain_results(client):
    results = client.gather(client.map(intermediates, [1, 1], pure=False))
    assert results == [intermediates(1)] * 2


def test_worker_rss_holds_the_dram_budget_not_the_bytes_on_nvme(client):
    held = client.submit(hold, 2 * GiB)
    wait(held)  # computed and kept on its worker
    (report,) = [r for r in client.run(tmd.stats).values() if r["allocated_bytes"] >= 2 * GiB]
    assert report["nvme_bytes"] >= 1.4 * GiB
    assert report["rss"] < 0.8 * GiB  # below Dask's pause threshold: the worker runs on
    del held


def test_dask_spilling_is_off_under_the_pool(client):
    def spill_settings(dask_worker):
        mm = dask_worker.memory_manager
        return mm.memory_target_fraction, mm.memory_spill_fraction, dask_worker.data.n, mm.memory_pause_fraction
    for target, spill, n, pause in client.run(spill_settings).values():
        assert (target, spill, n) == (False, False, float("inf"))
        assert pause == 0.8  # pausing stays: it protects the machine


def test_interposer_plugin_restarts_workers_with_the_interposer(monkeypatch):
    # The nannies live in this process and set their pre-spawn environment in
    # it: keep the interposer's variables from later tests' subprocesses.
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    with cluster() as c, Client(c) as cl:
        cl.register_plugin(tmd.TieredMemory())
        assert not any(r["malloc"] for r in cl.run(tmd.stats).values())
        cl.register_plugin(tmd.Interposer())
        cl.wait_for_workers(2)
        assert all(r["malloc"] for r in cl.run(tmd.stats).values())


def test_unregistering_the_plugin_gives_dask_its_spilling_back(client):
    def spill_settings(dask_worker):
        return dask_worker.memory_manager.memory_spill_fraction, dask_worker.data.n
    client.unregister_worker_plugin("tieredmem")
    try:
        assert all(spill == 0.7 and n == int(0.6 * GiB) for spill, n in client.run(spill_settings).values())
        assert not any(client.run(tmd.stats).values())
    finally:
        client.register_plugin(tmd.TieredMemory())


def test_client_run_reports_tier_bytes_and_fault_rates(client):
    def touch_for(seconds):
        a = np.zeros(700 << 17)  # 700 MiB: more than the 512 MiB budget
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            a += 1.0
        return float(a[0])

    running = client.submit(touch_for, 5)
    deadline = time.monotonic() + 30
    while not running.done() and time.monotonic() < deadline:
        busy = [r for r in client.run(tmd.stats).values() if r["faults_per_s"] > 0 and r["nvme_bytes"] > 0]
        if busy:
            break
        time.sleep(0.5)
    assert busy, "no worker reported faults per second with bytes on NVMe while the task ran"
    assert busy[0]["dram_bytes"] <= busy[0]["dram_budget"]
    running.result()


def test_prometheus_endpoint_has_the_pools_metrics(client):
    def metrics_url(dask_worker):
        return f"http://127.0.0.1:{dask_worker.http_server.port}/metrics"
    for url in client.run(metrics_url).values():
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        assert 'dask_worker_tieredmem_tier_bytes{tier="nvme"}' in text
        assert "dask_worker_tieredmem_faults_total" in text


def test_heartbeats_carry_the_pools_report_to_the_scheduler(client):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reports = [w["metrics"].get("tieredmem") for w in client.scheduler_info()["workers"].values()]
        if all(reports):
            break
        time.sleep(0.2)
    assert all(r["dram_budget"] == 512 << 20 for r in reports)


def test_worker_restart_recreates_its_pool(client):
    pids = client.run(os.getpid)
    client.restart()
    client.wait_for_workers(2)
    assert set(client.run(os.getpid).values()).isdisjoint(pids.values())
    assert all(r is not None and r["faults"] == 0 for r in client.run(tmd.stats).values())


def test_killed_worker_leaves_no_tier_files(client):
    held = client.submit(hold, GiB)  # half of it on NVMe
    wait(held)

    def where(dask_worker):
        return os.getpid(), dask_worker.local_directory, tmd.stats()["nvme_bytes"]
    (pid, directory, _), = [w for w in client.run(where).values() if w[2] > 0]
    slot_files = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert any(f.startswith(directory) and f.endswith("(deleted)") for f in slot_files)  # open, unlinked
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [os.path.join(d, f) for d, _, files in os.walk(directory) for f in files] if os.path.isdir(directory) else []
    assert not [f for f in left if "tieredmem" in f or os.path.getsize(f) > 1 << 20]
    client.wait_for_workers(2)
    del held


def test_bad_settings_fail_on_the_client_naming_the_option():
    with pytest.raises(ValueError, match="dram"):
        tmd.TieredMemory(dram="lots")
    with pytest.raises(ValueError, match="dram_share"):
        tmd.TieredMemory(dram_share=1.5)
    with pytest.raises(ValueError, match="policy"):
        tmd.TieredMemory(policy="mru")


def test_a_worker_without_a_memory_limit_needs_a_dram_budget():
    class Worker:
        class memory_manager:
            memory_limit = None
        local_directory = "/tmp"
    with pytest.raises(ValueError, match="no memory_limit.*give dram="):
        tmd.Settings().pool_kwargs(Worker)


def test_a_missing_nvme_path_is_named():
    class Worker:
        class memory_manager:
            memory_limit = 1 << 30
        local_directory = "/tmp"
    with pytest.raises(FileNotFoundError, match="nvme_path"):
        tmd.Settings(nvme_path="/nonexistent/tier").pool_kwargs(Worker)


def test_config_preload_installs_the_pool_in_every_worker():
    """The `distributed.worker.preload` config route (for deployments that set
    Dask's configuration rather than the worker's command line)."""
    with dask.config.set({"distributed.worker.preload": ["tieredmem.dask"],
                          "distributed.worker.preload-argv": [["--tieredmem-dram", "256MiB"]]}):
        with cluster() as c, Client(c) as cl:
            reports = cl.run(tmd.stats)
    assert len(reports) == 2
    assert all(r["dram_budget"] == 256 << 20 for r in reports.values()), reports


def test_preload_installs_the_pool_with_the_interposer_in_cli_workers(tmp_path):
    """`dask worker ADDRESS --preload-nanny tieredmem.dask --preload
    tieredmem.dask --tieredmem-dram 256MiB`, against a `dask scheduler`, both
    subprocesses (their logs in tmp_path)."""
    # The worker imports this module to run its task.
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONPATH=os.path.dirname(__file__))
    env.pop("LD_PRELOAD", None)
    dask_cmd = os.path.join(os.path.dirname(sys.executable), "dask")
    sched_file = tmp_path / "scheduler.json"

    def start(*args, log):
        return subprocess.Popen([dask_cmd, *args], env=env, cwd=tmp_path, stderr=open(tmp_path / log, "w"))
    procs = [start("scheduler", "--scheduler-file", str(sched_file), "--port", "0", "--no-dashboard",
                   log="scheduler.log")]
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(start("worker", address, "--nthreads", "1", "--memory-limit", LIMIT,
                           "--local-directory", str(tmp_path / "work"), "--preload-nanny", "tieredmem.dask",
                           "--preload", "tieredmem.dask", "--tieredmem-dram", "256MiB", log="worker.log"))
        with Client(address, timeout=60) as cl:
            cl.wait_for_workers(1, timeout=60)
            (report,) = cl.run(tmd.stats).values()
            assert report["dram_budget"] == 256 << 20
            assert report["malloc"]  # the nanny spawned the worker with the interposer
            (env,) = cl.run(lambda: dict(os.environ)).values()
            assert "LD_PRELOAD" not in env  # and took it out of what its tasks' children inherit
            assert cl.submit(intermediates, 1, pure=False).result() == intermediates(1)
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(30)
