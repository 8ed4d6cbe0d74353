"""Host groups across processes (docs/sharing.md): processes that name one
group share its DRAM, moved every period by measured benefit.

The processes are tests/scripts/share_member.py: a member that loops over
an array larger than its share of the group (it faults), or one that wrote
its array and sleeps (it stopped faulting). The group's table and the
members' published figures are sampled from here throughout."""
import itertools
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from tieredmem import published
from tieredmem.sharing import table

pytestmark = pytest.mark.timeout(60, method="thread")

MiB = 1 << 20
SCRIPT = pathlib.Path(__file__).parent / "scripts" / "share_member.py"
SAMPLE_S = 0.02
_groups = itertools.count()


def group_name():
    return f"test-{os.getpid()}-{next(_groups)}"


def start(group, host_dram, period, floor, role, size, nvme):
    """A member process, once its pool runs: (process, what it said of itself:
    "published", its published file; "child", its forked child's pid)."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), group, host_dram, str(period), floor, role, size,
                             str(nvme)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise AssertionError(f"a member of {group} exited with {proc.returncode} before it ran")
    return proc, json.loads(line)


def stop(group, procs):
    """Kill the members; remove what they left (the group's table, their
    published files), as the next member or reader would."""
    for proc in procs:
        proc.kill()
        proc.wait()
    published.processes([p.pid for p in procs])
    try:
        os.unlink(table.path_of(group))
    except FileNotFoundError:
        pass


def members_by_pid(group):
    status = table.status(group)
    return status, {m["pid"]: m for m in status["members"]}


@pytest.fixture(scope="module")
def faulting_beside_idle(tmp_path_factory):
    """64 MiB shared by a member looping over 40 MiB and one that wrote
    24 MiB and sleeps, both with floors of 8 MiB; 0.5 s periods. They start
    with 32 MiB each. Samples of the table and of both pools' published
    figures, every SAMPLE_S from the second member's start until the looping
    one has read nothing from below for a second (at most 12 s)."""
    nvme = tmp_path_factory.mktemp("nvme")
    group = group_name()
    loop, told = start(group, "64MiB", 0.5, "8MiB", "loop", "40MiB", nvme)
    idle, told_idle = start(group, "64MiB", 0.5, "8MiB", "idle", "24MiB", nvme)
    loop_file, idle_file = told["published"], told_idle["published"]
    samples, held_since = [], None
    deadline = time.monotonic() + 12
    try:
        while time.monotonic() < deadline:
            status, members = members_by_pid(group)
            pools = {pid: published.read(path) for pid, path in ((loop.pid, loop_file), (idle.pid, idle_file))}
            # (a pool's first figures come with its background's first tick)
            samples.append((status, members, {pid: p for pid, p in pools.items() if p.updated_ns}))
            if members[loop.pid]["grant"] > 32 * MiB and members[loop.pid]["misses"] == 0:
                held_since = held_since or time.monotonic()
                if time.monotonic() - held_since > 1:
                    break
            else:
                held_since = None
            time.sleep(SAMPLE_S)
    finally:
        stop(group, [loop, idle])
    return loop.pid, idle.pid, samples


def test_the_member_that_stopped_faulting_gives_its_dram_to_the_one_that_faults(faulting_beside_idle):
    loop, idle, samples = faulting_beside_idle
    _, first, _ = samples[0]
    _, last, _ = samples[-1]
    assert (first[loop]["grant"], first[idle]["grant"]) == (32 * MiB, 32 * MiB)
    assert last[loop]["grant"] >= 40 * MiB and last[loop]["misses"] == 0, "the looping member's array fits"
    assert last[idle]["grant"] + last[loop]["grant"] == 64 * MiB, "the idle member's DRAM went to it"


def test_no_member_is_ever_below_its_floor(faulting_beside_idle):
    loop, idle, samples = faulting_beside_idle
    below = [(pid, m["grant"], pools[pid].stats.dram.capacity) for _, members, pools in samples
             for pid, m in members.items() if pid in pools and min(m["grant"], pools[pid].stats.dram.capacity) < 8 * MiB]
    assert below == [], "(pid, grant, its pool's DRAM budget) below the 8 MiB floor"


def test_the_group_never_holds_more_dram_than_its_budget(faulting_beside_idle):
    _, _, samples = faulting_beside_idle
    assert len(samples) > 50
    over = []
    for status, members, pools in samples:
        held = sum(p.stats.dram.used + p.stats.spare for p in pools.values())
        granted = sum(m["grant"] for m in members.values())
        if max(held, granted) > status["budget"]:
            over.append((held, granted))
    assert over == [], "(DRAM the pools held, DRAM granted) over the group's 64 MiB"


def test_a_member_killed_with_sigkill_gives_its_share_back_within_one_period(tmp_path):
    group, period = group_name(), 1.0
    looping, _ = start(group, "32MiB", period, "4MiB", "loop", "8MiB", tmp_path)
    killed, _ = start(group, "32MiB", period, "4MiB", "idle", "8MiB", tmp_path)
    try:
        _, members = members_by_pid(group)
        assert members[killed.pid]["grant"] > 4 * MiB, "the member to be killed held more than its floor"
        killed.kill()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3 * period:
            _, members = members_by_pid(group)
            if killed.pid not in members and members[looping.pid]["grant"] == 32 * MiB:
                break
            time.sleep(SAMPLE_S)
        returned = time.monotonic() - t0
    finally:
        stop(group, [looping, killed])
    assert killed.pid not in members, "the killed member's slot is still in the table"
    assert members[looping.pid]["grant"] == 32 * MiB, "the survivor's grant: the whole group's DRAM"
    assert returned < period


def test_the_last_member_ending_its_program_removes_the_groups_table(tmp_path):
    group = group_name()
    proc, _ = start(group, "32MiB", 1.0, "4MiB", "exit", "8MiB", tmp_path)
    assert proc.wait(timeout=30) == 0
    assert not os.path.exists(table.path_of(group))


def test_a_killed_members_forked_child_does_not_keep_its_share(tmp_path):
    group, period = group_name(), 1.0
    looping, _ = start(group, "32MiB", period, "4MiB", "loop", "8MiB", tmp_path)
    killed, told = start(group, "32MiB", period, "4MiB", "fork", "8MiB", tmp_path)
    try:
        killed.kill()
        t0 = time.monotonic()
        while killed.pid in members_by_pid(group)[1] and time.monotonic() - t0 < 3 * period:
            time.sleep(SAMPLE_S)
        assert os.path.exists(f"/proc/{told['child']}"), "its forked child lives on"
        assert killed.pid not in members_by_pid(group)[1], "the killed member's slot is still in the table"
    finally:
        os.kill(told["child"], 9)
        stop(group, [looping, killed])
