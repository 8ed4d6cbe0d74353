"""What pools publish for other processes (csrc/publish.c, tieredmem.published)
and the commands that read it: `tieredmem stats PID --json` against the
process's own pool.stats(), `tieredmem top` in a real terminal (tmux), and
the files' lifetime: private, removed at release and at exit, and removed by
the next reader when their process was killed or their pid reused.

The live processes are tests/scripts/settled_pool.py, which prints its own
figures once they have settled."""
import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from tieredmem import published
from tieredmem._engine import ffi, lib
from tieredmem.pool import TIERS
from tieredmem.sizes import format_size

from settled import SCRIPT, origin_line, start, stop

pytestmark = pytest.mark.timeout(120, method="thread")

TOP_WAIT_S = 20


@pytest.fixture(scope="module")
def settled(tmp_path_factory):
    nvme = tmp_path_factory.mktemp("nvme")
    proc, told = start([sys.executable, str(SCRIPT), str(nvme)])
    yield proc, told
    stop(proc)


def tm_command(*args):
    return subprocess.run([sys.executable, "-m", "tieredmem", *args], capture_output=True, text=True, timeout=60)


def test_stats_json_agrees_with_the_process_own_pool_stats(settled):
    proc, told = settled
    out = tm_command("stats", str(proc.pid), "--json")
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert snap["pid"] == proc.pid and str(SCRIPT) in snap["command"]
    (pool,) = snap["pools"]
    mine = told["stats"]
    assert mine["nvme"]["used"] > 0 and mine["dram"]["used"] > 0, "the array was to spill from DRAM to NVMe"
    differ = {k: (v, pool["stats"][k]) for k, v in mine.items() if k not in ("block_size", "last_error")
              and pool["stats"][k] != v}
    assert differ == {}, "published figures that differ from pool.stats() (its, published)"
    assert (pool["block_size"], pool["last_error"], pool["policy"]) == (mine["block_size"], mine["last_error"], "lru")
    (array,) = pool["arrays"]
    assert {t: array[t] for t in TIERS} == told["placement"]
    assert array["origin"] == f"{SCRIPT}:{origin_line()}"


def test_stats_of_a_process_without_pools_says_so():
    out = tm_command("stats", str(os.getppid()))
    assert out.returncode == 1
    assert f"no process {os.getppid()} publishes tieredmem pools" in out.stderr


def test_top_shows_the_process_and_its_numbers_in_a_terminal(settled, tmp_path):
    proc, told = settled
    assert shutil.which("tmux"), "this test draws `top` in tmux: apt-get install tmux"
    socket = f"tieredmem-test-{os.getpid()}"  # a tmux server of its own
    tmux = ["tmux", "-L", socket]
    # Its size is the terminal's: not COLUMNS and LINES as pytest may have set them.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    top = f"{sys.executable} -m tieredmem top {proc.pid}"
    subprocess.run(tmux + ["new-session", "-d", "-x", "160", "-y", "50", top], check=True, env=env)
    try:
        nvme = format_size(told["stats"]["nvme"]["used"])
        deadline = time.monotonic() + TOP_WAIT_S
        while True:
            screen = subprocess.run(tmux + ["capture-pane", "-p"], capture_output=True, text=True).stdout
            if nvme in screen or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)
    assert f"PID {proc.pid}" in screen, screen
    rows = {}  # the tier table's rows, by tier: the tier's name comes first in them
    for line in screen.splitlines():
        words = line.replace("│", " ").split()
        if words[:1] in (["dram"], ["nvme"]):
            rows[words[0]] = " ".join(words)
    for tier in ("dram", "nvme"):
        figures = told["stats"][tier]
        assert f"{tier} {format_size(figures['used'])} {format_size(figures['capacity'])}" in rows[tier], screen
    assert "policy lru" in screen
    assert f"settled_pool.py:{origin_line()}" in screen


def test_a_pool_publishes_a_file_only_its_user_can_read_and_its_release_removes_it(pool):
    p = pool()
    path = p.published_path
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.geteuid())
    assert os.path.basename(path).startswith(f"tieredmem-{os.geteuid()}-{os.getpid()}-")
    p.close()
    assert not os.path.exists(path)


def test_a_pool_made_with_publish_false_publishes_nothing(pool):
    assert pool(publish=False).published_path is None


def test_publishing_is_off_with_tieredmem_publish_0(pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_PUBLISH", "0")
    assert pool().published_path is None


def run_child(tmp_path, body):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(body))
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_a_process_that_exits_while_arrays_keep_its_pool_alive_removes_its_file(tmp_path):
    (path,) = run_child(tmp_path, """
        import ctypes, sys
        import tieredmem as tm
        pool = tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=sys.argv[1])
        a = pool.zeros(2**20)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(a))  # never freed: the pool is never released
        pool.close()
        print(pool.published_path)
        """)
    assert not os.path.exists(path)


def test_a_forked_child_that_exits_leaves_its_parent_file(tmp_path):
    path, exists_after_child = run_child(tmp_path, """
        import os, sys
        import tieredmem as tm
        pool = tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=sys.argv[1])
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # exits as a program does: Python's and the C library's exit handlers run
        os.waitpid(pid, 0)
        print(pool.published_path, os.path.exists(pool.published_path))
        """)
    assert exists_after_child == "True"
    assert not os.path.exists(path)


def test_a_sigkilled_process_leaves_a_file_that_the_next_reader_removes(tmp_path):
    proc, told = start([sys.executable, str(SCRIPT), str(tmp_path)])
    proc.kill()
    proc.wait()
    assert os.path.exists(told["path"]), "nothing removes the file of a killed process but a reader"
    assert proc.pid not in [p["pid"] for p in published.processes()]
    assert not os.path.exists(told["path"])


def fake_file(pool_number, seq, start_time):
    """A published file of this process, as the engine would write it."""
    pub = ffi.new("tm_pub *")
    pub.magic, pub.version, pub.size = lib.TM_PUB_MAGIC, lib.TM_PUB_VERSION, ffi.sizeof("tm_pub")
    pub.seq, pub.pid, pub.start_time, pub.pool = seq, os.getpid(), start_time, pool_number
    path = pathlib.Path(published.directory()) / f"tieredmem-{os.geteuid()}-{os.getpid()}-{pool_number}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, ffi.buffer(pub))
    os.close(fd)
    return path


FAKE_POOL = 10**9  # no real pool of this process gets that number


def test_a_file_left_mid_write_by_a_live_process_is_reported_stale_without_figures():
    path = fake_file(FAKE_POOL, seq=1, start_time=published.start_time(os.getpid()))
    try:
        (me,) = published.processes([os.getpid()])
        (snap,) = [p for p in me["pools"] if p["pool"] == FAKE_POOL]
        assert "mid-write" in snap["stale"] and "stats" not in snap
        assert path.exists(), "its process lives: it may still finish the write"
    finally:
        published.remove(path)


def test_a_file_whose_pid_now_belongs_to_another_process_is_removed():
    path = fake_file(FAKE_POOL + 1, seq=2, start_time=published.start_time(os.getpid()) + 1)
    try:
        procs = published.processes([os.getpid()])
        assert FAKE_POOL + 1 not in [p["pool"] for proc in procs for p in proc["pools"]]
        assert not path.exists()
    finally:
        published.remove(path)


def own_snapshot(p):
    (me,) = published.processes([os.getpid()])
    (snap,) = [s for s in me["pools"] if s["pool"] == int(p.published_path.rsplit("-", 1)[1])]
    return snap


def test_the_published_rates_are_those_of_the_engine_last_second(pool):
    period = lib.TM_PUB_PERIOD_MS / 1000
    p = pool()
    a = p.zeros(3 * 2**20)  # 24 MiB through 8 MiB of DRAM: every pass demotes
    end = time.monotonic() + 1.5 * period
    while time.monotonic() < end:
        a += 1.0
    busy = own_snapshot(p)["rates"]
    time.sleep(2.5 * period)  # a whole period without any access
    idle = own_snapshot(p)
    assert busy["period"] == pytest.approx(period, rel=0.2)
    assert busy["demotions"] > 0 and busy["faults"] > 0 and busy["bytes_written"] > 0
    assert idle["rates"]["demotions"] == 0 and idle["rates"]["faults"] == 0
    assert idle["stats"]["demotions"] > 0
    del a
