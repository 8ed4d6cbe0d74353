"""What a suite run writes: results.json (every raw figure), results.md (the
tables) and PNG plots (matplotlib, Agg backend; an optional extra: without it
the plots are skipped and the outputs say so).

results.json keys: schema, complete, config, machine (cores, memory, kernel,
versions, the disk and its measured O_DIRECT bandwidth, the cgroup), systems
(id, label, kind, policy, pmem, status), workloads, cells (one per workload and
footprint: params and, per system, state, status, runs with raw timings,
cgroup peaks and tier stats, and a summary of medians, min/max and ratio to
all-DRAM), targets, occupancy (the run plotted over time), plots, notes,
elapsed_s.
"""
import json
import os

from .workloads import WORKLOADS

MiB = 1 << 20
GiB = 1 << 30
RATIO_PNG = "ratio_vs_footprint.png"
OCCUPANCY_PNG = "occupancy.png"
NOT_SELECTED = "not run: not selected"


def _size(n):
    if n is None:
        return "-"
    return f"{n / GiB:.3g} GiB" if n >= GiB else f"{n / MiB:.3g} MiB"


def _s(x):
    return f"{x:.3g} s" if x >= 0.01 else f"{x * 1000:.3g} ms"


def _jsonable(obj):
    try:
        return obj.item()
    except AttributeError:
        return str(obj)


# --------------------------------------------------------------- occupancy

def pick_occupancy_run(results):
    """The tieredmem run shown over time: the pipeline at 2x (else the largest
    footprint of the first workload), a system with PMEM first, its median run."""
    cells = results.get("cells", [])
    if not cells:
        return None
    pref = [c for c in cells if c["workload"] == "pipeline" and c["footprint"] == 2.0]
    if not pref:
        pref = sorted(cells, key=lambda c: (c["workload"] != "pipeline", -c["footprint"]))
    systems = [s for s in results.get("systems", []) if s["kind"] == "tieredmem"]
    systems.sort(key=lambda s: (not s["pmem"], s["policy"] != "lru"))
    for cell in pref:
        for s in systems:
            rec = cell["systems"].get(s["id"])
            runs = [r for r in (rec or {}).get("runs", []) if r.get("status") == "ok" and r.get("series")]
            if rec and rec["state"] == "ok" and runs:
                runs.sort(key=lambda r: r["compute_s"])
                run = runs[len(runs) // 2]
                return {"workload": cell["workload"], "footprint": cell["footprint"],
                        "footprint_bytes": cell["footprint_bytes"], "system": s["id"], "label": s["label"],
                        "rep": run.get("rep"), "columns": run.get("series_columns"), "series": run["series"],
                        "marks": run.get("marks"), "budget": results["config"]["budget"],
                        "pmem_bytes": results["config"]["pmem_bytes"] if s["pmem"] else 0}
    return None


def thin_series(results, keep):
    """Keep every run's sampled series short in the JSON, except `keep`'s."""
    for cell in results.get("cells", []):
        for rec in cell["systems"].values():
            for run in rec.get("runs", []):
                series = run.get("series")
                if series and len(series) > 60 and run is not keep:
                    step = len(series) / 60
                    run["series"] = [series[int(i * step)] for i in range(60)] + [series[-1]]


# ----------------------------------------------------------------- markdown

def _cell_text(sid, rec, notes):
    state = rec["state"]
    summ = rec.get("summary") or {}
    if state == "ok" and "compute_s" in summ:
        c = summ["compute_s"]
        spread = f" ({_s(c['min'])}–{_s(c['max'])})" if c["n"] > 1 else ""
        text = f"{_s(c['median'])}{spread}"
        if sid != "numpy" and "ratio" in summ:
            text = f"**{summ['ratio']['median']:.3g}x** · " + text
        if rec.get("unchecked"):
            text += " (unchecked)"
        return text
    if state == "WRONG":
        return "**WRONG**"
    if state == "oom":
        return "OOM-killed"
    if state == "timeout":
        lb = rec.get("lower_bound_s")
        ratio = summ.get("ratio_lower_bound")
        return "timeout" + (f": > {_s(lb)}" if lb else "") + (f" (> {ratio:.3g}x)" if ratio else "")
    reason = rec["status"]
    if reason not in notes:
        notes.append(reason)
    mark = chr(ord("a") + notes.index(reason))
    return f"{'not run' if state == 'not run' else state} ({mark})"


def render_markdown(results, image_dir=""):
    cfg, m = results["config"], results["machine"]
    disk = m.get("disk", {})
    lines = [f"Run of {m.get('date')}, {results['elapsed_s'] / 60:.1f} min"
             + ("" if results.get("complete") else f" — **incomplete: {results.get('interrupted', 'stopped')}**")
             + "."]
    lines += ["", "**Machine**: " + machine_line(m), ""]
    pe = cfg.get("pmem_emulation_params")
    pe_text = (", ".join(f"{k} {v:g}" for k, v in pe.items()) if isinstance(pe, dict) else str(pe))
    lines += [f"**Setup**: DRAM budget {_size(cfg['budget'])} (scale {cfg['scale']:g}"
              + (", --quick" if cfg["quick"] else "") + f"); footprints {', '.join(f'{f:g}x' for f in sorted(cfg['footprints']))} "
              f"of it; {cfg['reps']} repetition(s) per system, each in a fresh process, systems interleaved per "
              f"repetition. Memory cgroup per run: {cfg['limit_rule']}; allowance {_size(cfg['allowance'])}. "
              f"tieredmem: DRAM tier = the budget, NVMe tier in `{disk.get('path')}`; with PMEM: a PMEM tier of "
              f"{_size(cfg['pmem_bytes'])}, **emulated** in DRAM (/dev/shm) at the speed of `{cfg['pmem_emulation']}` "
              f"({pe_text}). Timeout per run: {cfg['min_timeout']:g} s + {cfg['timeout_factor']:g}x the all-DRAM "
              f"run's wall time (at most {cfg['max_timeout']:g} s).", ""]
    lines += ["Cells: time of the computation (after its input was made), median (min–max) over the repetitions; "
              "**ratio** = median / median of all-DRAM numpy in the same run. Every answer is checked against "
              "all-DRAM's; WRONG means it differed.", ""]
    lines += ["### Targets", "", targets_table(results), ""]
    plots = results.get("plots") or {}
    if plots.get("ratio"):
        lines += [f"![time / all-DRAM time against footprint / DRAM budget]({image_dir}{plots['ratio']})", ""]
    if plots.get("occupancy"):
        occ = results.get("occupancy") or {}
        lines += [f"![bytes per tier over time: {occ.get('label')} on {occ.get('workload')} at "
                  f"{occ.get('footprint', 0):g}x]({image_dir}{plots['occupancy']})", ""]
    if plots.get("skipped"):
        lines += [f"Plots: {plots['skipped']}", ""]
    unselected = [s["label"] for s in results["systems"] if s["status"].startswith(NOT_SELECTED)]
    if unselected:
        lines += ["Not selected for this run (--systems): " + ", ".join(unselected) + ".", ""]
    sys_rows = {s["id"]: s for s in results["systems"] if not s["status"].startswith(NOT_SELECTED)}
    for w in results["workloads"]:
        cells = [c for c in results["cells"] if c["workload"] == w["name"]]
        if not cells:
            continue
        lines += [f"### {w['title']} (`{w['name']}`)", "", w["description"] + ".", ""]
        head = "| system | " + " | ".join(f"{c['footprint']:g}x ({_size(c['footprint_bytes'])})" for c in cells) + " |"
        lines += [head, "|---" * (len(cells) + 1) + "|"]
        peaks = []
        for c in cells:
            p = ((c["systems"].get("numpy") or {}).get("summary") or {}).get("peak_bytes")
            peaks.append(_size(p["median"]) if p else "-")
        lines.append("| *measured footprint (all-DRAM peak)* | " + " | ".join(peaks) + " |")
        notes = []
        for sid, srow in sys_rows.items():
            texts = [_cell_text(sid, c["systems"][sid], notes) for c in cells if sid in c["systems"]]
            lines.append(f"| {srow['label']} | " + " | ".join(t.replace("|", "\\|") for t in texts) + " |")
        if notes:
            lines.append("")
            lines += [f"({chr(ord('a') + i)}) {n}  " for i, n in enumerate(notes)]
        lines.append("")
    if results.get("notes"):
        lines += ["Notes: " + "; ".join(results["notes"]), ""]
    return "\n".join(lines)


def machine_line(m):
    disk = m.get("disk", {})
    parts = [f"{m.get('cores')} cores ({m.get('cpu_model')})", f"{_size(m.get('mem_total_bytes'))} RAM",
             f"Linux {m.get('kernel')}", f"Python {m.get('python')}", f"numpy {m.get('numpy')}",
             f"pandas {m.get('pandas')}"]
    text = ", ".join(parts)
    d = f"; disk: {disk.get('fstype')} on {disk.get('device')}"
    for key, when in (("probe_start", "at the start"), ("probe_end", "at the end")):
        p = disk.get(key)
        if p and "read_gbps" in p:
            r = p["read_gbps"]
            d += (f", O_DIRECT sequential read {r['median']:.2f} GB/s ({r['min']:.2f}–{r['max']:.2f}, 1 MiB "
                  f"requests) and write {p['write_gbps']:.2f} GB/s {when}")
        elif p:
            d += f", disk probe {when} failed: {p.get('error')}"
    cg = m.get("cgroup", {})
    cgt = f"; memory cgroup v{cg['version']}" if "version" in cg else f"; no memory cgroup: {cg.get('error')}"
    load = f"; load average {m.get('loadavg_start', '?').split()[0]} at the start, " \
           f"{(m.get('loadavg_end') or '?').split()[0]} at the end"
    return text + d + cgt + load + "."


def targets_table(results):
    rows = results.get("targets", [])
    if not rows:
        return "(no targets)"
    tids = []
    for r in rows:
        if (r["target"], r["text"], r["bound"]) not in tids:
            tids.append((r["target"], r["text"], r["bound"]))
    labels = {s["id"]: s["label"] for s in results["systems"]}
    hidden = {s["id"] for s in results["systems"] if s["status"] != "ok"}
    systems = []
    for r in rows:
        if r["system"] not in systems and r["system"] not in hidden:
            systems.append(r["system"])
    out = ["| system | " + " | ".join(f"{t} ({b})" for _, t, b in tids) + " |", "|---" * (len(tids) + 1) + "|"]
    for sid in systems:
        cells = []
        for tid, _, _ in tids:
            r = next(x for x in rows if x["system"] == sid and x["target"] == tid)
            if r.get("value") is None:
                cells.append(f"n/a: {r.get('note', '')}".replace("|", "\\|"))
                continue
            v = f"{'≥ ' if r.get('lower_bound') else ''}{r['value']:.3g}"
            met = {True: "met", False: "missed", None: "unknown"}[r.get("met")]
            cells.append(f"{v} ({met})")
        out.append(f"| {labels.get(sid, sid)} | " + " | ".join(cells) + " |")
    absent = [f"{s['label']} ({s['status']})" for s in results["systems"]
              if s["kind"] == "tieredmem" and s["status"] != "ok" and not s["status"].startswith(NOT_SELECTED)]
    if absent:
        out += ["", "Not in this run: " + "; ".join(absent) + "."]
    return "\n".join(out)


# -------------------------------------------------------------------- plots

def _style(sid):
    if sid == "swap":
        return {"color": "tab:red", "marker": "s", "linestyle": "-"}
    if sid == "memmap":
        return {"color": "tab:orange", "marker": "D", "linestyle": "-"}
    colors = {"lru": "tab:blue", "fifo": "tab:green", "hotness": "tab:purple"}
    parts = sid.split("-")
    policy = parts[1] if len(parts) > 1 else ""
    return {"color": colors.get(policy, "tab:gray"), "marker": "o" if not sid.endswith("-pmem") else "^",
            "linestyle": "-" if not sid.endswith("-pmem") else "--"}


def plot(results, out_dir):
    """Write the PNGs; returns {"ratio": name, "occupancy": name} or {"skipped": reason}."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return {"skipped": f"skipped: matplotlib is not installed ({exc}); `pip install matplotlib` for plots"}
    written = {}
    labels = {s["id"]: s["label"] for s in results["systems"]}
    workloads = [w["name"] for w in results["workloads"]]
    if workloads and results.get("cells"):
        n = len(workloads)
        cols = min(3, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows + 1.2), squeeze=False)
        handles = {}
        for i, wname in enumerate(workloads):
            ax = axes[i // cols][i % cols]
            cells = sorted((c for c in results["cells"] if c["workload"] == wname), key=lambda c: c["footprint"])
            failures = []
            for sid in labels:
                if sid == "numpy":
                    continue
                xs, ys, lo, hi, lbx, lby = [], [], [], [], [], []
                for c in cells:
                    rec = c["systems"].get(sid) or {}
                    summ = rec.get("summary") or {}
                    if "ratio" in summ:
                        xs.append(c["footprint"])
                        ys.append(summ["ratio"]["median"])
                        lo.append(summ["ratio"]["median"] - summ["ratio"]["min"])
                        hi.append(summ["ratio"]["max"] - summ["ratio"]["median"])
                    elif "ratio_lower_bound" in summ:
                        lbx.append(c["footprint"])
                        lby.append(summ["ratio_lower_bound"])
                    elif rec.get("state") in ("oom", "WRONG", "error"):
                        failures.append(f"{sid} {rec['state']} at {c['footprint']:g}x")
                st = _style(sid)
                if xs:
                    h = ax.errorbar(xs, ys, yerr=[lo, hi], capsize=3, label=labels[sid], markersize=5, **st)
                    handles[sid] = h
                if lbx:
                    ax.scatter(lbx, lby, marker="^", facecolors="none", edgecolors=st["color"], s=80)
                    for x, y in zip(lbx, lby):
                        ax.annotate("timeout", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=7,
                                    color=st["color"])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks([c["footprint"] for c in cells])
            ax.set_xticklabels([f"{c['footprint']:g}" for c in cells])
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_title(WORKLOADS[wname].title if wname in WORKLOADS else wname, fontsize=10)
            ax.set_xlabel("footprint / DRAM budget")
            ax.set_ylabel("time / all-DRAM time")
            ax.grid(True, which="both", alpha=0.3)
            if failures:
                ax.text(0.02, 0.02, "\n".join(failures[:6]), transform=ax.transAxes, fontsize=6, va="bottom")
        for j in range(n, rows * cols):
            axes[j // cols][j % cols].axis("off")
        fig.legend([handles[k] for k in handles], [labels[k] for k in handles], loc="lower center",
                   fontsize=8, ncol=4, frameon=False)
        cfg = results["config"]
        fig.suptitle(f"Time normalized to all-DRAM numpy, same run (median; bars: min–max; hollow ^: timed out, "
                     f"a lower bound)\nDRAM budget {_size(cfg['budget'])} + {_size(cfg['allowance'])} allowance; "
                     f"PMEM tier emulated in DRAM at '{cfg['pmem_emulation']}' speed; "
                     f"{cfg['reps']} repetition(s); {results['machine'].get('date', '')[:10]}", fontsize=9)
        fig.tight_layout(rect=(0, 1.0 / (4.0 * rows + 1.2), 1, 1 - 0.5 / (4.0 * rows + 1.2)))
        fig.savefig(os.path.join(out_dir, RATIO_PNG), dpi=110)
        plt.close(fig)
        written["ratio"] = RATIO_PNG
    occ = results.get("occupancy")
    if occ and occ.get("series"):
        cols = occ["columns"]
        data = {name: [row[i] for row in occ["series"]] for i, name in enumerate(cols)}
        t = data["t"]
        fig, ax = plt.subplots(figsize=(8, 4.2))
        tiers = [(k, data[k]) for k in ("dram", "pmem", "nvme") if k in data]
        ax.stackplot(t, *[[v / MiB for v in vals] for _, vals in tiers],
                     labels=[f"{k.upper()} tier" + (" (emulated)" if k == "pmem" else "") for k, _ in tiers],
                     colors=["tab:blue", "tab:purple", "tab:gray"][:len(tiers)], alpha=0.7)
        if any(v is not None for v in data.get("cgroup", [])):
            ax.plot(t, [(v or 0) / MiB for v in data["cgroup"]], color="black", linewidth=1,
                    label="memory charged to the cgroup")
        ax.axhline(occ["budget"] / MiB, color="tab:red", linestyle="--", linewidth=1, label="DRAM budget")
        for name, x in (occ.get("marks") or {}).items():
            ax.axvline(x, color="gray", linestyle=":", linewidth=0.8)
            ax.text(x, ax.get_ylim()[1] * 0.98, f" {name}", fontsize=7, va="top", rotation=90)
        ax.set_xlabel("seconds since the process started")
        ax.set_ylabel("MiB")
        ax.set_title(f"{occ['label']}: {occ['workload']} at {occ['footprint']:g}x the DRAM budget "
                     f"({_size(occ['footprint_bytes'])}), bytes per tier", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, OCCUPANCY_PNG), dpi=110)
        plt.close(fig)
        written["occupancy"] = OCCUPANCY_PNG
    return written


def write(results, out_dir, plots=True):
    """results.json, results.md and the plots into out_dir; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    occ_run = None
    occ = pick_occupancy_run(results)
    if occ is not None:
        results["occupancy"] = occ
        for cell in results["cells"]:
            rec = cell["systems"].get(occ["system"], {})
            for run in rec.get("runs", []):
                if cell["workload"] == occ["workload"] and cell["footprint"] == occ["footprint"] \
                        and run.get("series") is occ["series"]:
                    occ_run = run
    thin_series(results, occ_run)
    results["plots"] = plot(results, out_dir) if plots else {"skipped": "skipped: --no-plots"}
    md = render_markdown(results)
    paths = {"json": os.path.join(out_dir, "results.json"), "md": os.path.join(out_dir, "results.md")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1, default=_jsonable)
        f.write("\n")
    with open(paths["md"], "w") as f:
        f.write("# tieredmem bench: the tiering suite\n\n" + md)
    for k, name in results["plots"].items():
        if k != "skipped":
            paths[k] = os.path.join(out_dir, name)
    return paths
