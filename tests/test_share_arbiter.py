"""How a host group's DRAM is divided (tieredmem/sharing/arbiter.py) and how a
member's curve is read from its ghost (tieredmem/sharing/benefit.py): pure
functions, on members and counts made up here."""
import pytest
from hypothesis import given, settings, strategies as st

from tieredmem.sharing import benefit
from tieredmem.sharing.arbiter import View, arbitrate

MiB = 1 << 20
STEP = 2 * MiB
BUDGET = 64 * MiB
PERIOD = 1.0


def member(key, grant, gain=(), loss=(), floor=4 * MiB, ceiling=BUDGET, weight=1.0, settled=True, **kw):
    """A member at `grant`, its curves given per step (bytes/s), padded with
    their last value to 16 points."""
    def curve(points):
        points = list(points) or [0.0]
        return points + [points[-1]] * (16 - len(points))
    kw.setdefault("target", grant)
    return View(key=key, floor=floor, ceiling=ceiling, weight=weight, grant=grant, gain=curve(gain),
                loss=curve(loss), receiver=settled, donor=settled, **kw)


def test_dram_moves_from_the_member_it_helps_least_to_the_one_it_helps_most():
    hot = member(0, 32 * MiB, gain=[100 * MiB] * 4)
    idle = member(1, 32 * MiB, loss=[0.0] * 16)
    targets, moves = arbitrate([hot, idle], BUDGET, STEP, PERIOD)
    assert targets[0] > 32 * MiB and targets[0] + targets[1] == BUDGET
    assert [(m.source, m.dest) for m in moves] == [(1, 0)]


def test_a_move_stops_at_the_donors_floor():
    hot = member(0, 32 * MiB, gain=[100 * MiB * k for k in range(1, 17)])
    idle = member(1, 32 * MiB, floor=20 * MiB)
    targets, _ = arbitrate([hot, idle], BUDGET, STEP, PERIOD)
    assert targets == {0: 44 * MiB, 1: 20 * MiB}


def test_a_move_stops_at_the_receivers_ceiling():
    hot = member(0, 32 * MiB, gain=[100 * MiB * k for k in range(1, 17)], ceiling=36 * MiB)
    idle = member(1, 32 * MiB)
    targets, _ = arbitrate([hot, idle], BUDGET, STEP, PERIOD)
    assert targets == {0: 36 * MiB, 1: 28 * MiB}


def test_no_move_when_the_gain_does_not_beat_the_loss_by_the_hysteresis():
    a = member(0, 32 * MiB, gain=[10 * MiB * k for k in range(1, 17)])
    b = member(1, 32 * MiB, loss=[9 * MiB * k for k in range(1, 17)])  # 10 < 1.25 * 9
    targets, moves = arbitrate([a, b], BUDGET, STEP, PERIOD)
    assert moves == [] and targets == {0: 32 * MiB, 1: 32 * MiB}


def test_no_move_that_does_not_repay_the_bytes_it_moves_within_the_payback_time():
    # 0.4 MiB/s saved per 2 MiB moved: 5 s to repay, more than two 1 s periods.
    a = member(0, 32 * MiB, gain=[0.4 * MiB * k for k in range(1, 17)])
    b = member(1, 32 * MiB)
    _, moves = arbitrate([a, b], BUDGET, STEP, PERIOD)
    assert moves == []


def test_looking_ahead_finds_a_gain_that_only_a_larger_amount_brings():
    # A hot set that fits only with 10 MiB more: nothing for 1 to 4 steps.
    hot = member(0, 32 * MiB, gain=[0, 0, 0, 0, 500 * MiB])
    idle = member(1, 32 * MiB)
    targets, _ = arbitrate([hot, idle], BUDGET, STEP, PERIOD)
    assert targets[0] == 42 * MiB


def test_members_whose_curves_are_not_settled_are_not_moved():
    hot = member(0, 32 * MiB, gain=[100 * MiB] * 4, settled=False)
    idle = member(1, 32 * MiB)
    _, moves = arbitrate([hot, idle], BUDGET, STEP, PERIOD)
    assert moves == []


def test_a_member_that_does_not_answer_keeps_what_it_holds_and_is_not_moved():
    hot = member(0, 32 * MiB, gain=[100 * MiB] * 4)
    stopped = member(1, 32 * MiB, target=20 * MiB, frozen=True)
    targets, _ = arbitrate([hot, stopped], BUDGET, STEP, PERIOD)
    assert targets == {0: 32 * MiB, 1: 32 * MiB}


def test_dram_no_member_holds_goes_first_where_it_helps_most():
    a = member(0, 16 * MiB, gain=[50 * MiB * k for k in range(1, 5)] + [200 * MiB], ceiling=26 * MiB)
    b = member(1, 16 * MiB, ceiling=60 * MiB)
    targets, moves = arbitrate([a, b], BUDGET, STEP, PERIOD)
    assert moves[0].source is None and moves[0].dest == 0
    assert targets == {0: 26 * MiB, 1: 38 * MiB}


def test_dram_no_member_holds_and_helps_none_is_shared_by_weight():
    a = member(0, 8 * MiB, weight=1.0)
    b = member(1, 8 * MiB, weight=3.0)
    targets, _ = arbitrate([a, b], BUDGET, STEP, PERIOD)
    assert targets == {0: 20 * MiB, 1: 44 * MiB}


def test_a_joining_member_is_made_room_for_by_those_above_their_fair_share():
    old = member(0, BUDGET)
    mid = member(1, 0, target=0, floor=0)  # made up: a member at nothing, a fair share of a third
    new = member(2, 0, target=21 * MiB, settled=False)
    targets, _ = arbitrate([old, mid, new], BUDGET, STEP, PERIOD)
    assert targets[2] == 21 * MiB and targets[1] == 0 and sum(targets.values()) == BUDGET


def rising(steps):
    """A curve of 16 points rising by `steps` (bytes/s), then flat."""
    points = [sum(steps[:k + 1]) * MiB for k in range(len(steps))]
    return points + [points[-1]] * (16 - len(points))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 8), st.sampled_from([0.5, 1, 3]),
                          st.lists(st.integers(0, 400), min_size=1, max_size=5),
                          st.lists(st.integers(0, 400), min_size=1, max_size=5), st.booleans(), st.booleans()),
                min_size=1, max_size=5))
def test_targets_never_add_up_to_more_than_the_budget_nor_leave_floors_or_ceilings(rows):
    members = []
    for key, (grant, target, floor, weight, gain, loss, settled, frozen) in enumerate(rows):
        floor = floor * MiB
        members.append(View(key=key, floor=floor, ceiling=max(floor, 40 * MiB), weight=weight,
                            grant=max(grant * 4 * MiB, floor), target=target * 4 * MiB, gain=rising(gain),
                            loss=rising(loss), receiver=settled, donor=settled, frozen=frozen))
    budget = max(sum(m.grant if m.frozen else m.floor for m in members), 16 * MiB)
    targets, _ = arbitrate(members, budget, STEP, PERIOD)
    assert sum(targets.values()) <= budget
    for m in members:
        assert m.floor <= targets[m.key] <= m.ceiling or (m.frozen and targets[m.key] == m.grant)


# ---- benefit.py: a member's curve from its ghost ----------------------------

def ghost(**counts):
    """Ghost counts (benefit.read's shape), all zero but those given."""
    g = {"evictions": 0, "refaults": 0, "reuses": 0, "first_uses": 0, "census_ns": 0,
         "refault_distance": [0] * benefit.DISTANCES, "reuse_latency": [0] * benefit.AGES,
         "reuse_latency_ns": [0] * benefit.AGES, "parked": [0] * benefit.AGES}
    for name, value in counts.items():
        if isinstance(value, dict):
            for i, n in value.items():
                g[name][i] = n
        else:
            g[name] = value
    return g


def distance_bucket(d):
    return max(i for i in range(benefit.DISTANCES) if benefit.DISTANCE_LO[i] <= d)


def test_more_dram_saves_the_refaults_within_its_amount():
    # In 2 s, 100 refaults at distances 64 to 79 (a bucket), 50 at 1024 to 1279.
    after = ghost(refault_distance={distance_bucket(64): 100, distance_bucket(1024): 50})
    assert benefit.gain(ghost(), after, 2.0, [32, 71, 79, 1279, 4096]) == [0.0, 25.0, 50.0, 75.0, 75.0]


def test_less_dram_costs_nothing_for_what_the_pool_does_not_use():
    population = benefit.classes(ghost(), ghost(first_uses=10), 1.0, free=100, resident=0)
    assert benefit.loss(population, [50, 100]) == [0.0, 0.0]


def test_less_dram_takes_parked_blocks_first_each_reused_as_parked_blocks_were():
    # 100 blocks parked now; 50 reuses in 2 s: a parked block is reused every 8 s (twice 4 s between reuses).
    after = ghost(parked={3: 100}, reuse_latency={6: 50}, reuse_latency_ns={6: 50 * 5_000_000})
    population = benefit.classes(ghost(), after, 2.0, free=0, resident=200)
    lost = benefit.loss(population, [100, 101])
    assert lost[0] == pytest.approx(100 * 50 / 2.0 / (2 * 100))
    assert lost[1] - lost[0] == pytest.approx(1 / (2 * 0.005)), "the next block: a reused one, every 10 ms"


def test_the_parked_blocks_of_a_pool_that_reuses_nothing_cost_nothing():
    population = benefit.classes(ghost(), ghost(parked={9: 300}), 1.0, free=0, resident=300)
    assert benefit.loss(population, [300]) == [0.0]


def test_a_reused_block_costs_a_read_as_often_as_it_is_reused():
    # 100 reuses, each 50 ms after its park: used about every 100 ms.
    bucket = next(i for i in range(benefit.AGES) if benefit.AGE_LO_S[i + 1] > 0.05)
    after = ghost(reuse_latency={bucket: 100}, reuse_latency_ns={bucket: 100 * 50_000_000})
    population = benefit.classes(ghost(), after, 1.0, free=0, resident=1000)
    assert benefit.loss(population, [10]) == [100.0]


def test_blocks_used_once_since_they_came_in_cost_nothing_to_lose():
    after = ghost(first_uses=30, reuse_latency={5: 10}, reuse_latency_ns={5: 10_000_000})
    population = benefit.classes(ghost(), after, 1.0, free=0, resident=400)
    assert benefit.loss(population, [300]) == [0.0]


def test_less_dram_costs_at_least_what_as_much_more_would_save():
    # A pool that thrashes: its parked blocks are evicted before they are hit again; its refaults are near.
    after = ghost(parked={3: 100}, refault_distance={distance_bucket(8): 400})
    gain, loss = benefit.curves(ghost(), after, 1.0, free=0, resident=100, amounts=[16, 64])
    assert gain == [400.0, 400.0] and loss == gain


def test_blocks_nothing_was_learnt_of_are_not_given_away():
    population = benefit.classes(ghost(), ghost(), 1.0, free=0, resident=400)
    assert benefit.loss(population, [1]) == [benefit.UNKNOWN_RATE]
