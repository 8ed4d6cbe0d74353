"""Processes whose pool has settled (tests/scripts/settled_pool.py), for the
tests that read what pools publish from another process."""
import json
import pathlib
import subprocess

from tieredmem import published

SCRIPT = pathlib.Path(__file__).parent / "scripts" / "settled_pool.py"


def origin_line() -> int:
    """The line of settled_pool.py that makes its array."""
    return next(i for i, line in enumerate(SCRIPT.read_text().splitlines(), 1) if "# ORIGIN" in line)


def start(cmd, **kwargs):
    """Start `cmd`, which runs settled_pool.py; the process and the figures
    it printed of itself."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **kwargs)
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise AssertionError(f"{cmd} exited with {proc.returncode} before printing its figures")
    return proc, json.loads(line)


def stop(proc):
    """Kill it; its published file is left for a reader to remove, as any
    reader does."""
    proc.kill()
    proc.wait()
    published.processes([proc.pid])
