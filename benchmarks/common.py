"""Helpers shared by the benchmarks: timing, repetitions, machine info, reports."""

import argparse
import datetime
import json
import operator
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MiB = 1 << 20
GiB = 1 << 30

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_NVME_DIR = Path("~/.cache/tieredmem-bench").expanduser()


class NotRun(Exception):
    """A system could not be measured; the message is the reason reported."""


def bench_parser(doc, name, reps_help="repetitions per system (default 7, quick 3)", quick_help="3 repetitions"):
    """The options every benchmark takes: --quick, --reps, --out (where NAME.json
    and NAME.md go) and --nvme-dir."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--reps", type=int, help=reps_help)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help=f"directory for {name}.json/.md")
    parser.add_argument("--nvme-dir", type=Path, default=DEFAULT_NVME_DIR)
    return parser


def timed(fn):
    """Run fn() and return (result, seconds)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def describe_error(exc):
    return f"{type(exc).__name__}: {exc}"


def not_run(reason):
    return {"status": f"not run: {reason}", "runs": []}


def interleave(reps, systems):
    """Run each system's one-repetition function `reps` times, interleaving the
    systems within every repetition so that slow drift (thermal, background
    load, page-cache state) affects all of them alike.

    systems: {name: fn() -> dict of measurements}. Returns
    {name: {"status": "ok" | "not run: <reason>", "runs": [dict, ...]}}.
    A system that raises is not run again; its earlier runs stay in "runs".
    """
    records = {name: {"status": "ok", "runs": []} for name in systems}
    names = list(systems)
    for rep in range(reps):
        # Alternate the order so no system always runs first (or second).
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            record = records[name]
            if record["status"] != "ok":
                continue
            try:
                run = systems[name]()
            except NotRun as exc:
                record["status"] = f"not run: {exc}"
            except Exception as exc:
                record["status"] = f"not run: {describe_error(exc)}"
            else:
                record["runs"].append({"rep": rep, **run})
    return records


def summarize(record, key):
    """Median/min/max of measurement `key` over a system's runs, or None if the
    system was not run."""
    if record["status"] != "ok":
        return None
    values = [run[key] for run in record["runs"]]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def import_tieredmem():
    """Return (module, None), or (None, reason) if the package cannot be imported."""
    try:
        import tieredmem
    except Exception as exc:  # usually ImportError, but a broken build may raise anything
        return None, f"import tieredmem failed: {describe_error(exc)}"
    return tieredmem, None


def total_memory_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return None


def machine_info():
    return {
        "nproc": os.cpu_count(),
        "nproc_usable": len(os.sched_getaffinity(0)),
        "mem_total_bytes": total_memory_bytes(),
        "uname": platform.uname()._asdict(),
        "python": sys.version,
        "numpy": np.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


TABLE_COLUMNS = ["system", "metric", "median", "min", "max", "ratio", "target", "met"]


def _cell(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    # a "|" inside a reason (e.g. an error message) would split the cell
    return str(value).replace("|", "\\|")


def markdown_table(rows):
    """rows: dicts keyed by TABLE_COLUMNS; missing keys print as "-"."""
    lines = [
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "---|" * len(TABLE_COLUMNS),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(k)) for k in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(obj):
    # pool.stats() may hold numpy scalars; anything else unknown is kept as text
    return obj.item() if isinstance(obj, np.generic) else str(obj)


TARGET_OPS = {"<=": operator.le, ">=": operator.ge}


def comparison_rows(records, baseline, candidate, metrics):
    """Table rows for baseline and candidate; metrics: [(key, label, target)].
    The ratio is median(candidate) / median(baseline)."""
    rows = []
    for name in (baseline, candidate):
        if records[name]["status"] != "ok":
            rows.append({"system": name, "metric": records[name]["status"]})
            continue
        for key, label, target in metrics:
            summary = summarize(records[name], key)
            row = {"system": name, "metric": label, **summary}
            base = summarize(records[baseline], key)  # None if the baseline was not run
            if name == candidate and base is not None and base["median"]:
                row["ratio"] = summary["median"] / base["median"]
                if target is not None:
                    op, value = target
                    row["target"] = f"{op} {value}"
                    row["met"] = "yes" if TARGET_OPS[op](row["ratio"], value) else "no"
            rows.append(row)
    return rows


def figure_row(records, system, key, label, unit=1):
    """A table row of one figure: median/min/max of `key` over the system's runs,
    in `unit`s (MiB for bytes, say); the system's status if it was not run."""
    summary = summarize(records[system], key)
    if summary is None:
        return {"system": system, "metric": records[system]["status"]}
    return {"system": system, "metric": label, **{k: v / unit for k, v in summary.items()}}


def ratio_row(records, figure, baseline, label, target=None):
    """A table row of median(figure) / median(baseline), judged against `target`
    ((op, value) or None). figure and baseline are (system, key) pairs, so that
    a figure can be compared with another system's differently named one. No
    ratio if either system was not run."""
    row = {"system": figure[0], "metric": label}
    num, den = (summarize(records[system], key) for system, key in (figure, baseline))
    if num is None or den is None or not den["median"]:
        return row
    row["ratio"] = num["median"] / den["median"]
    if target is not None:
        op, value = target
        row["target"] = f"{op} {value}"
        row["met"] = "yes" if TARGET_OPS[op](row["ratio"], value) else "no"
    return row


def render_markdown(report, title):
    cfg = report["config"]
    lines = [
        f"# {title}",
        "",
        f"{report['machine']['date']}, {cfg['reps']} repetitions per system "
        f"(interleaved), {'quick' if cfg['quick'] else 'full'} sizes. "
        "median/min/max over repetitions; ratio = median(tieredmem) / median(baseline); "
        "GB/s = 1e9 bytes/s.",
    ]
    for name, scenario in report["scenarios"].items():
        params = scenario["params"]
        sizes = ", ".join(f"{k} {v / MiB:g} MiB" for k, v in params.items()
                          if k.endswith("_bytes"))
        lines += ["", f"## {name}", "", sizes, "", markdown_table(scenario["rows"])]
    return "\n".join(lines) + "\n"


def publish(report, out, name, title):
    """Print the report's markdown and write it to out/NAME.md and out/NAME.json."""
    markdown = render_markdown(report, title)
    print(markdown, end="")
    write_json(out / f"{name}.json", report)
    (out / f"{name}.md").write_text(markdown)


def in_subprocess(module, func, *args, timeout=900, preexec_fn=None):
    """func(*args) from `module`, run in a fresh interpreter; its dict result.
    Systems that allocate memory are measured each in its own process, so that
    neither inherits the other's memory state (a pool's 4 KiB shared-memory
    pages left behind cost numpy its transparent huge pages, for instance).
    preexec_fn runs in the forked child before exec (to enter a cgroup)."""
    code = f"import json; from {module} import {func}; print(json.dumps({func}(*{args!r}), default=str))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                         preexec_fn=preexec_fn)
    if res.returncode != 0:
        raise NotRun(f"{func} exited with {res.returncode}: {res.stderr.strip()[-300:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def in_memory_cgroup(module, func, *args, tag="bench"):
    """func(cgroup_path, cgroup_version, *args) from `module`, run as in_subprocess
    does but inside a new memory cgroup of its own. The group starts unlimited: the
    child limits it once its interpreter is up (tieredmem.bench.cgroup.limit_self),
    so that the limit comes on top of what the interpreter itself takes. The result
    gets the group's "cgroup_stats" (peak, OOM kills). NotRun if no memory cgroup
    can be made here (the reason says why) or the child was OOM-killed."""
    from tieredmem.bench import cgroup  # only the systems measured in a cgroup need it
    try:
        group = cgroup.MemCgroup(cgroup.find_location(), tag)
    except cgroup.CgroupUnavailable as exc:
        raise NotRun(f"no memory cgroup: {exc}") from None
    try:
        result = in_subprocess(module, func, group.path, group.version, *args, preexec_fn=group.add_self_fn())
    except NotRun:
        if group.stats()["oom_kill"]:
            raise NotRun(f"{func} was OOM-killed in its memory cgroup") from None
        raise
    else:
        result["cgroup_stats"] = group.stats()
        return result
    finally:
        group.remove()
