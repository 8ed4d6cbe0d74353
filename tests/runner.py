"""Running a test script in a fresh interpreter: under `tieredmem run`, or
with the malloc interposer preloaded and no pool attached until the script
attaches one. The environment is the test's, without tieredmem's variables or
a preload of its own, and with a cache of its own (built Arrow pools)."""
import json
import os
import subprocess
import sys

from tieredmem import malloc

TIMEOUT = 120


def env_for(tmp_path, extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDMEM_") and k != "LD_PRELOAD"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env.update(extra or {})
    return env


def tmrun(tmp_path, path, *options, env=None, dram="64MiB", nvme="1GiB"):
    """`python -m tieredmem run` the script, with an NVMe tier in tmp_path."""
    d = tmp_path / "nvme"
    d.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "tieredmem", "run", "--nvme-path", str(d), "--dram", dram, "--nvme", nvme,
           *options, str(path)]
    return subprocess.run(cmd, cwd=tmp_path, env=env_for(tmp_path, env), capture_output=True, text=True,
                          timeout=TIMEOUT)


def preloaded(tmp_path, path):
    """python with the interposer preloaded; $NVME is a directory for the script's pool."""
    env = env_for(tmp_path, {"LD_PRELOAD": str(malloc.library_path()), "NVME": str(tmp_path)})
    return subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def result(res):
    """The JSON the script printed last; the run must have succeeded."""
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])
