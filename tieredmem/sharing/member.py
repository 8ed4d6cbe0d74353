"""A pool's membership of a host group: joining, the member's thread, and
leaving. docs/sharing.md.

The thread, every POLL_S: finds the members that died (their lease is
gone) and frees their DRAM at once; follows its own target (shrinking its
pool first and then its grant, or raising its grant first, within what the
group has free, and then its pool), so that the grants, and the pools'
budgets under them, never add up to more than the group's budget. Every
period: measures its pool's curve (benefit.py), writes it with its
heartbeat, and arbitrates for the group if nobody did for a period."""
import atexit
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass

from .._engine import ffi, lib
from .. import published
from ..sizes import format_size, parse_size
from . import arbiter, benefit
from .table import NOTE, POINTS, Table, check_name, now_ns, step_of

POLL_S = 0.1                 # how often a member looks for dead members and at its target
LEASE_PERIODS = 3            # a member without a heartbeat for this many periods keeps its DRAM but is not moved
MIN_BLOCKS = 16              # the least DRAM a member's pool gets: a floor below it is raised to it
DEFAULT_PERIOD_S = 3.0
JOIN_WAIT_PERIODS = 2        # a member joining waits this long for the others to make room for its floor
PUBLISH_WAIT_S = 0.5         # a member that shrank waits at most this long for its pool to publish it
ENV = {"name": "TIEREDMEM_SHARE", "host_dram": "TIEREDMEM_HOST_DRAM", "floor": "TIEREDMEM_SHARE_FLOOR",
       "ceiling": "TIEREDMEM_SHARE_CEILING", "weight": "TIEREDMEM_SHARE_WEIGHT", "period": "TIEREDMEM_SHARE_PERIOD"}


@dataclass(frozen=True)
class Share:
    """How a pool takes part in a host group: Pool(share=Share("etl",
    host_dram="8GiB", floor="1GiB", weight=2)), or Pool(share="etl") with
    the rest from the environment (ENV). Unset fields come from the
    environment, else their defaults: host_dram none (the group's first
    member must give it), floor 0, ceiling the group's budget, weight 1,
    period 3 s (the group's: its first member's)."""
    name: str = None
    host_dram: object = None
    floor: object = None
    ceiling: object = None
    weight: object = None
    period: object = None


@dataclass(frozen=True)
class Settings:
    """A Share checked and in bytes and seconds."""
    name: str
    budget: int        # None: the group's, which must exist
    floor: int
    ceiling: int       # None: the group's budget
    weight: float
    period_s: float    # None: the group's, or DEFAULT_PERIOD_S for a new group


def settings(share):
    """`share` (None, a name, or a Share) with the environment, checked:
    Settings, or None if the pool is in no group."""
    if share is None:
        share = os.environ.get(ENV["name"]) or None
        if share is None:
            return None
    if isinstance(share, str):
        share = Share(name=share)
    if not isinstance(share, Share):
        raise TypeError(f"share: expected a group name or a tieredmem.Share, got {type(share).__name__}")
    value = {f: getattr(share, f) if getattr(share, f) is not None else os.environ.get(env) or None
             for f, env in ENV.items()}
    name = check_name(value["name"])
    budget = None if value["host_dram"] is None else parse_size(value["host_dram"], "host_dram")
    floor = parse_size(value["floor"] or 0, "share floor")
    ceiling = None if value["ceiling"] is None else parse_size(value["ceiling"], "share ceiling")
    weight = _number(value["weight"], 1.0, "share weight")
    period = None if value["period"] is None else _number(value["period"], None, "share period")
    if budget is not None and budget == 0:
        raise ValueError("host_dram: the group's DRAM must be more than 0")
    if not (weight > 0 and math.isfinite(weight)):
        raise ValueError(f"share weight: a finite number above 0, got {value['weight']!r}")
    if period is not None and not 0.1 <= period <= 3600:
        raise ValueError(f"share period: from 0.1 to 3600 seconds, got {value['period']!r}")
    if ceiling is not None and ceiling < floor:
        raise ValueError(f"share ceiling: {format_size(ceiling)} is below the floor, {format_size(floor)}")
    if budget is not None and floor > budget:
        raise ValueError(f"share floor: {format_size(floor)} is more than the group's DRAM, {format_size(budget)}")
    if budget is not None and ceiling is not None and ceiling > budget:
        raise ValueError(f"share ceiling: {format_size(ceiling)} is more than the group's DRAM, "
                         f"{format_size(budget)}")
    return Settings(name, budget, floor, ceiling, weight, period)


def _number(value, default, name):
    if value is None:
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None


def _round(n: int, bs: int) -> int:
    return n // bs * bs


# The members of this process: forked children drop their copies; exit leaves.
_members = weakref.WeakSet()


class Member:
    """A pool's place in a host group."""

    def __init__(self, s: Settings, block_size: int):
        self.s, self.bs = s, block_size
        self.pid = os.getpid()
        self.table = None
        self.slot = None
        self.engine = None
        self.published = None  # its pool's published file, if any
        self.dram = 0          # its pool's budget now
        self.step = self.period_s = self.floor = self.ceiling = None  # the group's and its own, once it joined
        self._stop = threading.Event()
        self._thread = None
        self._closing = False
        self._left = False
        self._leaving = threading.Lock()  # status() does not read a table being closed

    # ---- joining ----------------------------------------------------------

    def join(self) -> int:
        """Take a slot in the group, with a grant of at least the floor
        (waiting for the others to make room, at most JOIN_WAIT_PERIODS);
        returns the ceiling, what the pool is made with (its grant is set
        when it attaches). ValueError or MemoryError says why it cannot."""
        s = self.s
        while self.slot is None:
            table = Table.open(s.name, s.budget, s.period_s or DEFAULT_PERIOD_S)
            self.table = table
            try:
                with table.locked() as h:
                    # Unlinked: its last member left meanwhile; a new one is made.
                    if not table.unlinked():
                        self._reap(h)
                        self._take_slot(h)
            finally:
                if self.slot is None:
                    self.table = None
                    table.close()
        _members.add(self)
        try:
            self._wait_for_floor()
        except BaseException:
            self.leave()
            raise
        return self.ceiling

    def _take_slot(self, h) -> None:
        s = self.s
        live = self.table.members()
        if not live:  # a new group, or one whose members all died: it is this member's to set
            if s.budget is not None:
                h.budget, h.step = s.budget, step_of(s.budget)
            if s.period_s is not None:
                h.period_ns = int(s.period_s * 1e9)
        if s.budget is not None and s.budget != h.budget:
            raise ValueError(f"host_dram: group {s.name!r} has {format_size(h.budget)} of DRAM; this pool asked "
                             f"for {format_size(s.budget)} (leave host_dram out to take the group's)")
        if s.period_s is not None and int(s.period_s * 1e9) != h.period_ns:
            raise ValueError(f"share period: group {s.name!r} arbitrates every {h.period_ns / 1e9:g} s; this pool "
                             f"asked for {s.period_s:g} s (leave it out to take the group's)")
        self.step, self.period_s = h.step, h.period_ns / 1e9
        if s.ceiling is not None and s.ceiling > h.budget:
            raise ValueError(f"share ceiling: {format_size(s.ceiling)} is more than group {s.name!r}'s DRAM, "
                             f"{format_size(h.budget)}")
        floor = max(s.floor, MIN_BLOCKS * self.bs)
        ceiling = _round(h.budget if s.ceiling is None else s.ceiling, self.bs)
        if floor > ceiling or floor > h.budget:
            raise ValueError(f"share floor: {format_size(floor)} (at least {MIN_BLOCKS} blocks) is more than the "
                             f"{'group' if floor > h.budget else 'ceiling'} allows ({format_size(min(ceiling, h.budget))})")
        floors = sum(x.floor for _, x in live)
        if floors + floor > h.budget:
            raise ValueError(f"share floor: group {s.name!r} has {format_size(h.budget)} of DRAM and its members' "
                             f"floors take {format_size(floors)}: no room for a floor of {format_size(floor)}")
        free = [i for i, x in enumerate(h.slots) if not x.pid]
        if not free:
            raise ValueError(f"share: group {s.name!r} is full ({len(h.slots)} members)")
        i = free[0]
        if not self.table.take_lease(i):
            raise RuntimeError(f"share: slot {i} of group {s.name!r} is free but its lease is held")
        weights = sum(x.weight for _, x in live) + s.weight
        entry = min(max(_round(int(h.budget * s.weight / weights), self.bs), floor), ceiling)
        slot = h.slots[i]
        now = now_ns()
        slot.pid, slot.start_time, slot.block_size = self.pid, published.start_time(self.pid) or 0, self.bs
        slot.floor, slot.ceiling, slot.weight = floor, ceiling, s.weight
        slot.grant, slot.target = 0, entry
        slot.joined_ns = slot.heartbeat_ns = slot.moved_ns = slot.window_ns = now
        self.slot, self.ceiling, self.floor = i, ceiling, floor
        self._arbitrate(h, now)  # the others make room for its share
        self._reserve(h)

    def _wait_for_floor(self) -> None:
        deadline = time.monotonic() + JOIN_WAIT_PERIODS * self.period_s
        while True:
            with self.table.locked() as h:
                self._reap(h)
                self._reserve(h)
                grant = h.slots[self.slot].grant
            if grant >= self.floor:
                return
            if time.monotonic() > deadline:
                raise MemoryError(f"share: group {self.s.name!r} made no room for this pool's floor "
                                  f"({format_size(self.floor)}) within {JOIN_WAIT_PERIODS * self.period_s:g} s: its "
                                  f"members hold {format_size(sum(x.grant for _, x in self.table.members()))} of "
                                  f"{format_size(h.budget)}")
            time.sleep(POLL_S)

    def _reserve(self, h) -> int:
        """Raise its grant toward its target within what the group has
        free (lock held); returns the grant."""
        slot = h.slots[self.slot]
        free = h.budget - sum(x.grant for _, x in self.table.members())
        want = _round(min(slot.target, slot.grant + max(free, 0)), self.bs)
        if want > slot.grant:
            slot.grant = want
        return slot.grant

    # ---- the pool ------------------------------------------------------

    def attach(self, engine, pool_no: int, published_path) -> None:
        """Measure the pool, set its budget to the grant, and start the
        member's thread. The member pins the engine until it leaves."""
        self.published = published_path
        if lib.tm_ghost_enable(engine) < 0:
            raise MemoryError("share: cannot allocate the pool's benefit measurement")
        lib.tm_pool_pin(engine)
        self.engine = engine
        with self.table.locked() as h:
            h.slots[self.slot].pool = pool_no
            grant = h.slots[self.slot].grant
        self._resize(grant)
        self._thread = threading.Thread(target=self._run, name=f"tieredmem-share-{self.s.name}", daemon=True)
        self._thread.start()

    def _resize(self, dram: int) -> bool:
        r = lib.tm_pool_resize(self.engine, dram)
        if r < 0:
            self._note(ffi.string(lib.tm_last_error(self.engine, ffi.new("char[512]"), 512)).decode(errors="replace"))
            return False
        self.dram = dram
        return True

    def _note(self, text: str) -> None:
        with self.table.locked() as h:
            h.slots[self.slot].note = text.encode()[:NOTE - 1]

    # ---- the thread ----------------------------------------------------

    def _run(self) -> None:
        prev = self._sample()
        while not self._stop.wait(min(POLL_S, self.period_s / 4)):
            if self._closing and lib.tm_live_allocations(self.engine) == 0:
                break
            if self._follow():  # a curve is measured at one budget: the next period starts now
                prev = self._sample()
            elif time.monotonic() >= prev["t"] + self.period_s:
                cur = self._sample()
                self._publish(prev, cur)
                prev = cur
        self.leave()

    def _follow(self) -> bool:
        """Renew its heartbeat; free dead members' DRAM; move its pool
        toward its target. Whether its pool's budget changed."""
        with self.table.locked() as h:
            h.slots[self.slot].heartbeat_ns = now_ns()
            if self._reap(h):
                self._arbitrate(h, now_ns())  # their share goes back at once
            target = _round(h.slots[self.slot].target, self.bs)
            grant = self._reserve(h) if target > self.dram else h.slots[self.slot].grant
        if target < self.dram:  # its pool first, then its grant
            if not self._resize(target):
                return False
            self._await_published(target)
            with self.table.locked() as h:
                self._moved(h, target)
            return True
        if grant > self.dram and self._resize(grant):
            with self.table.locked() as h:
                self._moved(h, h.slots[self.slot].grant)
            return True
        return False

    def _await_published(self, dram: int) -> None:
        """Wait for its pool's published figures to show its new budget (a
        tick of its background thread, 50 ms), so that what the group's
        pools publish (top, the metrics) never adds up to more than the
        group's DRAM: the grant it gives back goes to another member only
        once its own figures are down."""
        deadline = time.monotonic() + PUBLISH_WAIT_S
        while self.published and time.monotonic() < deadline:
            pub = published.read(self.published)
            if pub is not None and pub.stats.dram.capacity <= dram:
                return
            time.sleep(0.005)

    def _moved(self, h, grant: int) -> None:
        slot = h.slots[self.slot]
        slot.grant, slot.moved_ns, slot.note = grant, now_ns(), b""
        slot.moves += 1

    def _sample(self) -> dict:
        st = ffi.new("tm_stats *")
        lib.tm_get_stats(self.engine, st)
        return {"t": time.monotonic(), "ns": now_ns(), "ghost": benefit.read(self.engine), "read": st.bytes_read,
                "fault_ns": st.fault_ns, "resident": st.dram.used // self.bs, "dram": st.dram.capacity // self.bs,
                "headroom": st.headroom // self.bs, "allocated": st.allocated // self.bs,
                "sample_rate": st.sample_rate}

    def _publish(self, prev: dict, cur: dict) -> None:
        """Its curve over the period since prev, in its slot; arbitration
        if it is due."""
        t0 = time.perf_counter()
        dt = cur["t"] - prev["t"]
        amounts = [k * self.step / self.bs for k in range(1, POINTS + 1)]
        spilling = cur["allocated"] > cur["dram"]
        free = max(cur["dram"] - cur["resident"] - (cur["headroom"] if spilling else 0), 0)
        gain, loss = benefit.curves(prev["ghost"], cur["ghost"], dt, free, cur["resident"], amounts)
        now = now_ns()
        with self.table.locked() as h:
            slot = h.slots[self.slot]
            since_move = (now - slot.moved_ns) / 1e9
            round_s = cur["resident"] / cur["sample_rate"] if cur["sample_rate"] else math.inf
            slot.mature = since_move >= max(self.period_s, round_s)
            slot.window_ns = prev["ns"]
            slot.misses = (cur["read"] - prev["read"]) / dt
            slot.stall = (cur["fault_ns"] - prev["fault_ns"]) / 1e9 / dt
            slot.resident, slot.free = cur["resident"] * self.bs, free * self.bs
            slot.idle = benefit.idle_blocks(cur["ghost"]["parked"], self.period_s) * self.bs
            slot.gain[:] = [g * self.bs for g in gain]
            slot.loss[:] = [x * self.bs for x in loss]
            census_s = (cur["ghost"]["census_ns"] - prev["ghost"]["census_ns"]) / 1e9
            slot.cost = (census_s + time.perf_counter() - t0) / dt
            if now - h.arbitrated_ns >= h.period_ns:
                self._arbitrate(h, now)

    # ---- the group -----------------------------------------------------

    def _reap(self, h) -> int:
        """Free the slots of dead members (lock held); how many."""
        dead = [i for i, _ in self.table.members() if i != self.slot and not self.table.alive(i)]
        for i in dead:
            h.slots[i] = type(h.slots[i])()
        return len(dead)

    def _arbitrate(self, h, now: int) -> None:
        views = []
        for i, x in self.table.members():
            fresh = now - x.heartbeat_ns <= LEASE_PERIODS * h.period_ns
            settled = fresh and x.window_ns >= x.moved_ns and x.grant == x.target
            views.append(arbiter.View(key=i, floor=x.floor, ceiling=x.ceiling, weight=x.weight, grant=x.grant,
                                      target=x.target, gain=list(x.gain), loss=list(x.loss), receiver=settled,
                                      donor=settled and bool(x.mature), frozen=not fresh))
        targets, moves = arbiter.arbitrate(views, h.budget, h.step, h.period_ns / 1e9)
        for i, target in targets.items():  # whole blocks: a member's grant reaches its target
            h.slots[i].target = _round(target, h.slots[i].block_size)
        h.arbitrated_ns = now
        h.arbitrations += 1
        h.moves += len(moves)
        h.moved_bytes += sum(m.amount for m in moves)

    # ---- leaving -------------------------------------------------------


    def close(self) -> None:
        """The pool was closed: leave once its last array is freed (now, if
        none is alive). Returns once the member's thread is done with the
        engine if it left: the pool's owner may drop the engine's handle
        next, which must not happen while the thread lets the engine go."""
        if self.pid != os.getpid():
            return
        self._closing = True
        if self._thread is None:
            self.leave()
        elif threading.current_thread() is not self._thread and (
                self._left or lib.tm_live_allocations(self.engine) == 0):
            self._stop.set()
            self._thread.join()

    def leave(self) -> None:
        """Give its DRAM back to the group and free its slot (the group's
        table goes with its last member); the engine is let go."""
        with self._leaving:
            if self._left or self.pid != os.getpid():
                return
            self._left = True
            self._give_back()

    def _give_back(self) -> None:
        if self.engine is not None and lib.tm_live_allocations(self.engine) == 0:
            lib.tm_pool_resize(self.engine, self.bs)  # its spares go back before its grant does
        if self.slot is not None:
            with self.table.locked() as h:
                h.slots[self.slot] = type(h.slots[self.slot])()
                if not self.table.members() and not self.table.unlinked():
                    os.unlink(self.table.path)
            self.table.drop_lease(self.slot)
        if self.table is not None:
            self.table.close()
        if self.engine is not None:
            lib.tm_pool_unpin(self.engine)
        _members.discard(self)  # last: until then, exit waits for the thread doing this

    def status(self):
        """Its group and its own figures, as pool.stats()["share"] gives
        them; None once it left."""
        with self._leaving:
            if self._left:
                return None
            return self._status()

    def _status(self) -> dict:
        with self.table.locked() as h:
            x = h.slots[self.slot]
            return {"group": self.s.name, "budget": int(h.budget), "period": h.period_ns / 1e9,
                    "granted": sum(int(m.grant) for _, m in self.table.members()),
                    "floor": int(x.floor), "ceiling": int(x.ceiling), "weight": float(x.weight),
                    "grant": int(x.grant), "target": int(x.target), "misses": float(x.misses),
                    "stall": float(x.stall), "gain": list(x.gain), "loss": list(x.loss), "step": int(h.step),
                    "moves": int(x.moves), "cost": float(x.cost), "note": x.note.decode(errors="replace")}


def _leave_all() -> None:
    """At exit: the process's DRAM goes with it. Each member's thread
    leaves (it may be resizing its pool)."""
    for m in list(_members):
        m._stop.set()
        if m._thread is not None:
            m._thread.join()
        m.leave()


def _forget_in_child() -> None:
    """In a forked child: the parent's memberships are not its own; its
    copies of their descriptors go (the parent's leases stay with the
    parent's)."""
    for m in list(_members):
        m._left = True
        if m.table is not None:
            os.close(m.table.fd)
    _members.clear()


atexit.register(_leave_all)
os.register_at_fork(after_in_child=_forget_in_child)
