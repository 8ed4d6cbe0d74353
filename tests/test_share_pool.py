"""Pool(share=...) in one process (docs/sharing.md): joining a host group,
what the pool's stats say of it, leaving, and the settings a group refuses.
The processes of tests/test_sharing.py share a group across processes."""
import itertools
import os
import time

import numpy as np
import pytest

import tieredmem as tm
from tieredmem import metrics, published
from tieredmem.sharing import table
from tieredmem.sharing.member import POLL_S

pytestmark = pytest.mark.timeout(60, method="thread")

MiB = 1 << 20
_groups = itertools.count()


@pytest.fixture
def group():
    """A group name of this test's own; its table removed afterwards if a
    test left it."""
    name = f"test-pool-{os.getpid()}-{next(_groups)}"
    yield name
    try:
        os.unlink(table.path_of(name))
    except FileNotFoundError:
        pass


@pytest.fixture
def member(group, make_pool):
    """Factory: a pool in `group` (32 MiB of DRAM unless given), 64 MiB of NVMe."""
    def make(host_dram="32MiB", **share):
        return make_pool(nvme="64MiB", share=tm.Share(group, host_dram=host_dram, period=0.5, **share))
    return make


def test_a_pool_alone_in_its_group_gets_all_of_its_dram(member):
    p = member()
    assert p.stats()["dram"]["capacity"] == 32 * MiB
    assert p.stats()["share"]["grant"] == 32 * MiB


def test_a_members_stats_show_its_group_its_share_and_its_stall(member, group):
    p = member(floor="4MiB", weight=2)
    a = p.zeros(4 * MiB // 8)
    a += 1
    share = p.stats()["share"]
    assert (share["group"], share["budget"], share["floor"], share["weight"]) == (group, 32 * MiB, 4 * MiB, 2.0)
    assert {"stall", "misses", "gain", "loss", "target", "ceiling"} <= set(share)
    del a


def test_two_pools_split_a_new_groups_dram_by_weight(member):
    first = member(weight=1)
    second = member(weight=3)
    assert second.stats()["share"]["grant"] == 24 * MiB
    assert first.stats()["dram"]["capacity"] == 8 * MiB


def test_the_last_member_leaving_removes_the_groups_table(member, group):
    p = member()
    assert os.path.exists(table.path_of(group))
    p.close()
    assert not os.path.exists(table.path_of(group))


def test_a_closed_member_keeps_its_share_until_its_last_array_goes(member, group):
    p = member()
    a = p.zeros(MiB)
    p.close()
    time.sleep(3 * POLL_S)
    assert [m["grant"] for m in table.status(group)["members"]] == [32 * MiB]
    del a
    deadline = time.monotonic() + 10 * POLL_S  # its thread looks every POLL_S
    while os.path.exists(table.path_of(group)) and time.monotonic() < deadline:
        time.sleep(POLL_S / 4)
    assert not os.path.exists(table.path_of(group))


def test_a_pool_joins_the_group_named_in_the_environment(group, make_pool, monkeypatch):
    monkeypatch.setenv("TIEREDMEM_SHARE", group)
    monkeypatch.setenv("TIEREDMEM_HOST_DRAM", "16MiB")
    p = make_pool(nvme="64MiB")
    assert p.stats()["share"]["group"] == group and p.stats()["dram"]["capacity"] == 16 * MiB


def test_resize_of_a_pool_in_a_group_is_refused(member, group):
    with pytest.raises(ValueError, match=f"set by its host group '{group}'"):
        member().resize("8MiB")


@pytest.mark.parametrize("share, message", [
    (tm.Share("bad/name", host_dram="8MiB"), "a group name is 1 to 64 letters"),
    (tm.Share("g", host_dram="8MiB", floor="16MiB"), "share floor: 16.0 MiB is more than the group's DRAM"),
    (tm.Share("g", host_dram="8MiB", floor="4MiB", ceiling="2MiB"), "share ceiling: 2.0 MiB is below the floor"),
    (tm.Share("g", host_dram="8MiB", weight=0), "share weight: a finite number above 0"),
    (tm.Share("g", host_dram="8MiB", period=0.01), "share period: from 0.1 to 3600 seconds"),
    (tm.Share("g", host_dram="lots"), "host_dram: cannot parse size 'lots'"),
])
def test_bad_share_settings_are_refused_naming_the_problem(nvme_dir, share, message):
    with pytest.raises(ValueError, match=message):
        tm.Pool(nvme="64MiB", nvme_path=nvme_dir, share=share)


def test_dram_and_share_together_are_refused(nvme_dir):
    with pytest.raises(ValueError, match="gets its DRAM from the group"):
        tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=nvme_dir, share=tm.Share("g", host_dram="8MiB"))


def test_a_new_group_without_its_dram_is_refused(nvme_dir, group):
    with pytest.raises(ValueError, match=f"group '{group}' does not exist yet"):
        tm.Pool(nvme="64MiB", nvme_path=nvme_dir, share=group)


def test_a_member_asking_for_other_dram_than_its_groups_is_refused(member):
    member()
    with pytest.raises(ValueError, match="has 32.0 MiB of DRAM; this pool asked for 64.0 MiB"):
        member(host_dram="64MiB")


def test_a_ceiling_beyond_the_groups_dram_is_refused_when_the_group_gives_it(member):
    member()
    with pytest.raises(ValueError, match="share ceiling: 64.0 MiB is more than group .* DRAM, 32.0 MiB"):
        member(host_dram=None, ceiling="64MiB")


def test_floors_beyond_the_groups_dram_are_refused(member):
    member(floor="20MiB")
    with pytest.raises(ValueError, match="floors take 20.0 MiB: no room for a floor of 16.0 MiB"):
        member(floor="16MiB")


def test_a_refused_member_leaves_no_slot_behind(member, group):
    member(floor="20MiB")
    with pytest.raises(ValueError):
        member(floor="16MiB")
    assert len(table.status(group)["members"]) == 1


def test_arrays_of_a_member_work_as_any_pools(member):
    p = member()
    a = p.full(3 * MiB, 2.0)
    assert a.sum() == 6.0 * MiB and np.all(a[::4096] == 2.0)
    del a


def snapshot_of(p):
    """The pool's published snapshot, as `top`, `stats` and the metrics read it."""
    (proc,) = published.processes([os.getpid()])
    return next(s for s in proc["pools"] if s["pool"] == int(p.published_path.rsplit("-", 1)[1]))


def test_the_published_figures_of_a_member_carry_its_group_and_stall(member, group):
    p = member(floor="4MiB")
    share = snapshot_of(p)["share"]
    assert (share["group"], share["grant"], share["floor"]) == (group, 32 * MiB, 4 * MiB)
    assert share["stall"] >= 0 and len(share["gain"]) == len(share["loss"]) == 16


def test_top_shows_a_members_group_grant_and_stall(member, group):
    from rich.console import Console
    from tieredmem.reporters import pools
    console = Console(width=300, record=True)
    console.print(pools.pool(snapshot_of(member())))
    text = console.export_text()
    assert f"host group {group}: grant 32.0 MiB of 32.0 MiB" in text and "stalled 0%" in text


def test_the_metrics_give_a_members_share_labelled_with_its_group(member, group):
    p = member()
    pool_no = str(snapshot_of(p)["pool"])
    found = {(s.name, s.labels["group"]): s.value for f in metrics.PoolCollector().collect() for s in f.samples
             if s.name.startswith("tieredmem_share_") and s.labels["pool"] == pool_no}
    assert found[("tieredmem_share_grant_bytes", group)] == 32 * MiB
    assert ("tieredmem_share_stalled_ratio", group) in found
