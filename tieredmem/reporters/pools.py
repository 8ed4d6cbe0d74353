"""The published pools as rich renderables: what `tieredmem top` refreshes
and `tieredmem stats` prints once (tieredmem.published gives the figures)."""
from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..pool import TIERS
from ..sizes import format_size

LOWER_TIERS = ("dram", "pmem", "nvme")
BAR_WIDTH = 30


def _rate(x: float) -> str:
    return f"{x:,.0f}/s"


def _mbps(x: float) -> str:
    return f"{x / 1e6:,.1f} MB/s"


def activity(rates: dict) -> Text:
    """What the pool did per second over the engine's last period."""
    if not rates["period"]:
        return Text("rates: after its first second", style="dim")
    return Text(f"faults {_rate(rates['faults'])} · promotions {_rate(rates['promotions'])} · "
                f"demotions {_rate(rates['demotions'])} · read {_mbps(rates['bytes_read'])} · "
                f"written {_mbps(rates['bytes_written'])} · stalled on faults {rates['stalled']:.0%} of the time")


def tiers(stats: dict) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("tier", "left"), ("used", "right"), ("capacity", "right"), ("", "left"),
                          ("peak", "right")):
        table.add_column(name, justify=justify)
    for tier in LOWER_TIERS:
        t = stats[tier]
        if t["capacity"]:
            table.add_row(tier, format_size(t["used"]), format_size(t["capacity"]),
                          ProgressBar(total=t["capacity"], completed=t["used"], width=BAR_WIDTH),
                          format_size(t["peak"]))
    return table


def arrays(rows: list) -> Table:
    """The largest allocations and where their bytes are."""
    table = Table(title="largest arrays", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("bytes", justify="right")
    for tier in TIERS:
        table.add_column("never written" if tier == "unbacked" else tier, justify="right")
    table.add_column("allocated at (track_origin)")
    for row in rows:
        table.add_row(format_size(row["bytes"]), *(format_size(row[t]) if row[t] else "-" for t in TIERS),
                      row["origin"] or "-")
    return table


def share(sh: dict) -> Text:
    """Its host group: its DRAM against the group's, and what its curve says
    one step (the group's budget / 32) more or less would be worth."""
    text = Text.assemble(("host group ", "bold"), (sh["group"], "bold"),
                         f": grant {format_size(sh['grant'])} of {format_size(sh['budget'])}"
                         f" (target {format_size(sh['target'])}; floor {format_size(sh['floor'])}, ceiling "
                         f"{format_size(sh['ceiling'])}, weight {sh['weight']:g}) · stalled {sh['stall']:.0%} · "
                         f"{format_size(sh['step'])} more would save {_mbps(sh['gain'][0])}, less would cost "
                         f"{_mbps(sh['loss'][0])} · idle {format_size(sh['idle'])}")
    if sh["note"]:
        text.append(f" · {sh['note']}", style="yellow")
    return text


def pool(snap: dict) -> Group:
    if "stats" not in snap:
        return Group(Text(f"pool {snap['pool']}: stale ({snap['stale']})", style="bold red"))
    s = snap["stats"]
    head = Text.assemble((f"pool {snap['pool']}", "bold"), f" · policy {snap['policy']} · "
                         f"{format_size(snap['block_size'])} blocks · {format_size(s['allocated'])} allocated of "
                         f"{format_size(s['capacity'])} in {snap['live_allocations']} allocations")
    if snap["stale"]:
        head.append(f" · stale: {snap['stale']}", style="bold red")
    parts = [head, activity(snap["rates"])]
    if snap.get("share"):
        parts.append(share(snap["share"]))
    parts.append(tiers(s))
    if snap["arrays"]:
        parts.append(arrays(snap["arrays"]))
    if snap["last_error"]:
        parts.append(Text(f"last error: {snap['last_error']}", style="yellow"))
    return Group(*parts)


def process(proc: dict) -> Panel:
    rss = proc["pools"][0]["stats"]["rss"] if "stats" in proc["pools"][0] else None
    title = f"PID {proc['pid']}" + (f" · resident {format_size(rss)}" if rss is not None else "")
    return Panel(Group(*(pool(p) for p in proc["pools"])), title=title, subtitle=proc["command"][:120],
                 title_align="left", subtitle_align="left")


def view(procs: list, nothing: str) -> Group:
    """Every process's panel; `nothing` says why there is none."""
    return Group(*(process(p) for p in procs)) if procs else Group(Text(nothing))
