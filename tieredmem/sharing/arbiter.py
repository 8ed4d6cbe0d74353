"""Arbitration: how a host group's DRAM budget is divided among its members
each period, from their curves (benefit.py). A pure function of what the
table holds; docs/sharing.md, "Arbitration".

In order:
1. every member's target within its floor and ceiling; a member that does
   not answer (no heartbeat for a lease) keeps what it holds;
2. if the targets add up to more than the budget (a member joined), the
   members above their weighted fair share give first, those whose curves
   say DRAM helps them least first, down to their floors;
3. DRAM no member holds (a member left or died) goes to those it helps
   most, if it pays for itself, then to every member by weight, up to the
   ceilings;
4. moves between members: DRAM goes from the member whose curve says it
   helps least to the one it helps most when the gain beats the loss by the
   hysteresis factor and pays for the move (the bytes it makes the receiver
   read) within the payback time, step after step until the next is not
   worth it; a member gives or receives in a round, not both, and only with
   a curve measured where it is now (its loss curve also only once sampling
   has looked at all of its DRAM since it last moved).
Amounts are multiples of the table's step (budget / 32). Gains and losses
are bytes per second read from the lower tiers, times the member's weight.
Looking ahead over every amount (not just one step) finds a gain that only
comes with a larger amount (a hot set that fits only whole), as utility-based
cache partitioning does (Qureshi and Patt, MICRO 2006)."""
from dataclasses import dataclass, field

HYSTERESIS = 0.25        # a move's gain must beat its loss by this much more
PAYBACK_PERIODS = 2      # ... and repay the bytes it moves within this many periods


@dataclass
class View:
    """One member as the arbiter sees it."""
    key: int
    floor: int
    ceiling: int
    weight: float
    grant: int
    target: int
    gain: list = field(default_factory=list)  # bytes/s saved with (k+1) steps more than its grant
    loss: list = field(default_factory=list)  # bytes/s added with (k+1) steps less
    receiver: bool = False   # its gain curve was measured at its grant, a whole period
    donor: bool = False      # its loss curve too, and sampling has looked at all of its DRAM since it moved
    frozen: bool = False     # does not answer: keeps what it holds


@dataclass
class Move:
    source: int              # a member's key, or None: DRAM no member held
    dest: int                # a member's key, or None: back to the group (a member joined)
    amount: int
    gain: float
    loss: float


def _at(curve: list, amount: int, step: int) -> float:
    """A curve's value at `amount` bytes: linear between its points (0 at 0),
    its last point beyond them."""
    if amount <= 0 or not curve:
        return 0.0
    k = amount / step
    if k >= len(curve):
        return curve[-1]
    i = int(k)
    lo = curve[i - 1] if i else 0.0
    return lo + (curve[i] - lo) * (k - i)


def _fair(m: View, members: list, budget: int) -> int:
    total = sum(x.weight for x in members)
    return int(budget * m.weight / total)


def _squeeze(members: list, targets: dict, budget: int, step: int) -> list:
    """Take the excess over the budget back from the members, above their
    fair share first, then down to their floors; those that lose least first."""
    moves = []
    excess = sum(targets.values()) - budget
    for keep_fair in (True, False):
        order = sorted((m for m in members if not m.frozen), key=lambda m: _at(m.loss, step, step) * m.weight)
        for m in order:
            if excess <= 0:
                return moves
            least = max(m.floor, _fair(m, members, budget)) if keep_fair else m.floor
            take = min(excess, targets[m.key] - least)
            if take > 0:
                targets[m.key] -= take
                excess -= take
                moves.append(Move(m.key, None, take, 0.0, _at(m.loss, take, step) * m.weight))
    return moves


def _better(score: float, best: float) -> bool:
    """Whether an amount's gain per byte beats the best so far; a larger
    amount that does as well wins (it is looked at later), so that a gain
    that grows evenly moves at once rather than a step a period."""
    return score > 0 and score >= best * (1 - 1e-9)


def _best_gain(m: View, targets: dict, most: int, step: int):
    """(gain per byte, amount, gain) of the best amount up to `most` for m,
    looking ahead over every multiple of the step."""
    best = (0.0, 0, 0.0)
    have = targets[m.key] - m.grant
    base = _at(m.gain, have, step)
    for k in range(1, most // step + 1):
        g = (_at(m.gain, have + k * step, step) - base) * m.weight
        if _better(g / (k * step), best[0]):
            best = (g / (k * step), k * step, g)
    return best


def _hand_out(members: list, targets: dict, budget: int, step: int, payback_s: float) -> list:
    """DRAM no member holds: to the members it helps most while it pays for
    itself, then by weight up to the ceilings."""
    moves = []
    free = budget - sum(targets.values())
    while free >= step:
        offers = [(_best_gain(m, targets, min(free, m.ceiling - targets[m.key]), step), m)
                  for m in members if m.receiver and not m.frozen]
        offers = [(o, m) for o, m in offers if o[1] and o[2] * payback_s >= o[1]]
        if not offers:
            break
        (_, amount, g), m = max(offers, key=lambda x: x[0][0])
        targets[m.key] += amount
        free -= amount
        moves.append(Move(None, m.key, amount, g, 0.0))
    open_ = [m for m in members if not m.frozen and targets[m.key] < m.ceiling]
    while free > 0 and open_:
        total = sum(m.weight for m in open_)
        given = 0
        for m in open_:
            share = min(int(free * m.weight / total), m.ceiling - targets[m.key])
            targets[m.key] += share
            given += share
        free -= given
        if not given:  # less than a byte each: the remainder to the first
            targets[open_[0].key] += min(free, open_[0].ceiling - targets[open_[0].key])
            break
        open_ = [m for m in open_ if targets[m.key] < m.ceiling]
    return moves


def _exchange(members: list, targets: dict, step: int, payback_s: float, hysteresis: float) -> list:
    """Moves between members, best first, until none is worth it: a member
    gives or receives in a round, not both. The curves are read from where
    each member is (its grant): past what it was given or gave already in
    this round, so that moves stop where the gain of the next step no longer
    beats its loss."""
    moves, donors, receivers = [], set(), set()
    while True:
        best = None
        for r in members:
            if not r.receiver or r.frozen or r.key in donors:
                continue
            got = targets[r.key] - r.grant
            for d in members:
                if d is r or not d.donor or d.frozen or d.key in receivers:
                    continue
                gave = d.grant - targets[d.key]
                most = min(r.ceiling - targets[r.key], targets[d.key] - d.floor)
                for k in range(1, most // step + 1):
                    amount = k * step
                    g = (_at(r.gain, got + amount, step) - _at(r.gain, got, step)) * r.weight
                    lost = (_at(d.loss, gave + amount, step) - _at(d.loss, gave, step)) * d.weight
                    if g < (1 + hysteresis) * lost or (g - lost) * payback_s < amount:
                        continue
                    score = (g - lost) / amount
                    if _better(score, best[0] if best else 0.0):
                        best = (score, Move(d.key, r.key, amount, g, lost))
        if best is None:
            return moves
        move = best[1]
        targets[move.source] -= move.amount
        targets[move.dest] += move.amount
        donors.add(move.source)
        receivers.add(move.dest)
        moves.append(move)


def arbitrate(members: list, budget: int, step: int, period_s: float, hysteresis: float = HYSTERESIS,
              payback_periods: float = PAYBACK_PERIODS):
    """New targets for `members` (Views) sharing `budget` bytes: (targets by
    key, the moves made). They add up to the budget at most, unless members
    that do not answer hold more than the others' floors leave."""
    targets = {}
    for m in members:
        targets[m.key] = m.grant if m.frozen else min(max(m.target, m.floor), m.ceiling)
    payback_s = payback_periods * period_s
    moves = _squeeze(members, targets, budget, step)
    moves += _hand_out(members, targets, budget, step, payback_s)
    moves += _exchange(members, targets, step, payback_s, hysteresis)
    return targets, moves
