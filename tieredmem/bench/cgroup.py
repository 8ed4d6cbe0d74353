"""Memory cgroups for the benchmark: create one per run, limit it, run a child
in it, read its peak and OOM kills, remove it (cgroup v1 or v2).

The parent creates the group unlimited and starts the child in it; the child
sets its own limit once its interpreter is up (`limit_self`), so that every
system gets the same memory beyond what its interpreter took: the limit is
the usage at that moment plus the DRAM budget plus a fixed allowance.

Discovery follows /proc/self/cgroup and /proc/self/mountinfo: a child group is
made under the process's own v1 memory cgroup, or under its own v2 group when
the memory controller can be enabled for children. Anything that prevents it
raises CgroupUnavailable with the reason. Needs root or a delegated subtree.
tests/memcgroup.py builds on this module too.
"""
import errno
import itertools
import os
import signal
import sys
import time
from dataclasses import dataclass

NAME_PREFIX = "tieredmem-bench"
_counter = itertools.count()
_RMDIR_RETRY_SECONDS = 5.0
UNLIMITED = None

FORCE_ENV = "TIEREDMEM_BENCH_FORCE_NO_CGROUP"  # test hook: behave as if no cgroup could be made


class CgroupUnavailable(Exception):
    """No memory-limited cgroup can be made here; the message says why."""


@dataclass(frozen=True)
class Location:
    version: int       # 1 or 2
    parent_dir: str    # where child groups are made


def _read(path):
    with open(path) as f:
        return f.read()


def _write(path, value):
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _unescape(s):
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _mounts():
    """(fstype, root, mount point, mount options, super options) of cgroup mounts."""
    out = []
    try:
        text = _read("/proc/self/mountinfo")
    except OSError:
        return out
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        pre_f, post_f = pre.split(), post.split()
        if not sep or len(pre_f) < 6 or len(post_f) < 3 or post_f[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((post_f[0], _unescape(pre_f[3]), _unescape(pre_f[4]), pre_f[5].split(","),
                    post_f[2].split(",")))
    return out


def _own_cgroups():
    """(v1 memory path, v2 path) of this process, from /proc/self/cgroup."""
    v1 = v2 = None
    try:
        text = _read("/proc/self/cgroup")
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read /proc/self/cgroup: {exc}") from exc
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v1, v2


def _join(root, mount_point, cg_path):
    root = root.rstrip("/") or "/"
    if root == "/":
        rel = cg_path
    elif cg_path == root or cg_path.startswith(root + "/"):
        rel = cg_path[len(root):]
    else:
        return None
    return os.path.normpath(mount_point + "/" + rel.lstrip("/"))


def _writable(path, what):
    if not os.path.isdir(path):
        raise CgroupUnavailable(f"{what} {path} does not exist")
    if not os.access(path, os.W_OK):
        raise CgroupUnavailable(f"{what} {path} is not writable (uid {os.geteuid()}; needs root or a "
                                "delegated cgroup subtree)")


def find_location():
    """Where limited child groups can be made; CgroupUnavailable says why not."""
    if os.environ.get(FORCE_ENV, "") not in ("", "0"):
        raise CgroupUnavailable(f"forced by {FORCE_ENV}")
    return discover()


def discover():
    """find_location without the benchmark's test hook (for the test-suite's helper)."""
    if sys.platform != "linux":
        raise CgroupUnavailable(f"memory cgroups need Linux (platform {sys.platform})")
    v1_path, v2_path = _own_cgroups()
    mounts = _mounts()
    if v1_path is not None:
        for fstype, root, mnt, opts, superopts in mounts:
            if fstype != "cgroup" or "memory" not in superopts:
                continue
            d = _join(root, mnt, v1_path)
            if d and os.path.isdir(d):
                if "ro" in opts:
                    raise CgroupUnavailable(f"cgroup v1 memory mount {mnt} is read-only")
                _writable(d, "own v1 memory cgroup")
                return Location(1, d)
        raise CgroupUnavailable(f"own v1 memory cgroup {v1_path!r} is not visible under any mount")
    if v2_path is not None:
        errors = []
        for fstype, root, mnt, opts, _ in mounts:
            if fstype != "cgroup2":
                continue
            d = _join(root, mnt, v2_path)
            if not d or not os.path.isdir(d):
                continue
            try:
                controllers = _read(os.path.join(d, "cgroup.controllers")).split()
            except OSError as exc:
                errors.append(f"{d}: cannot read cgroup.controllers: {exc}")
                continue
            if "memory" not in controllers:
                errors.append(f"{d} has no memory controller")
                continue
            if "ro" in opts:
                errors.append(f"cgroup2 mount {mnt} is read-only")
                continue
            _writable(d, "own v2 cgroup")
            stc = os.path.join(d, "cgroup.subtree_control")
            if "memory" not in _read(stc).split():
                try:
                    _write(stc, "+memory")
                except OSError as exc:
                    errors.append(f"cannot enable +memory in {stc}: {exc}"
                                  + (" (the group holds processes: cgroup v2's no-internal-processes rule)"
                                     if exc.errno == errno.EBUSY else ""))
                    continue
            return Location(2, d)
        raise CgroupUnavailable("; ".join(errors) or "no cgroup2 mount shows this process's group")
    raise CgroupUnavailable("/proc/self/cgroup has neither a v1 memory line nor a v2 line")


class MemCgroup:
    """One child memory cgroup, made unlimited; `remove()` kills what is left in it."""

    def __init__(self, loc: Location, tag="run", prefix=NAME_PREFIX):
        self.version = loc.version
        while True:
            path = os.path.join(loc.parent_dir, f"{prefix}-{os.getpid()}-{next(_counter)}-{tag}")
            try:
                os.mkdir(path)
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise CgroupUnavailable(f"cannot create cgroup {path}: {exc}") from exc
        self.path = path
        if self.version == 1:  # v1 does not count peaks from creation otherwise
            try:
                _write(os.path.join(path, "memory.max_usage_in_bytes"), "0")
            except OSError:
                pass

    def add_self_fn(self):
        """A preexec_fn that moves the forked child into the group before exec."""
        procs = os.path.join(self.path, "cgroup.procs")

        def enter():
            _write(procs, str(os.getpid()))
        return enter

    def stats(self):
        """{"oom_kill", "peak_bytes", "failcnt"}, None where the kernel does not say."""
        if self.version == 1:
            oom = _kv(os.path.join(self.path, "memory.oom_control")).get("oom_kill")
            return {"oom_kill": oom, "peak_bytes": _int(os.path.join(self.path, "memory.max_usage_in_bytes")),
                    "failcnt": _int(os.path.join(self.path, "memory.failcnt"))}
        oom = _kv(os.path.join(self.path, "memory.events")).get("oom_kill")
        return {"oom_kill": oom, "peak_bytes": _int(os.path.join(self.path, "memory.peak")), "failcnt": None}

    def remove(self):
        """Kill stragglers and rmdir; never raises (a warning if it cannot)."""
        remove_group(self.path)


def _procs(path):
    try:
        return [int(x) for x in _read(os.path.join(path, "cgroup.procs")).split()]
    except OSError:
        return []


def remove_group(path):
    if not os.path.isdir(path):
        return
    deadline = time.monotonic() + _RMDIR_RETRY_SECONDS
    delay = 0.01
    while True:
        for pid in _procs(path):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                break
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    # Last resort: a task that will not leave keeps the group busy; moved to the parent, it lets it go.
    parent_procs = os.path.join(os.path.dirname(path), "cgroup.procs")
    for pid in _procs(path):
        try:
            _write(parent_procs, str(pid))
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError as exc:
        print(f"tieredmem: WARNING: could not remove cgroup {path}: {exc}", file=sys.stderr)


def cleanup_stale(loc: Location):
    """Remove groups left by a benchmark that was SIGKILLed (their maker is gone)."""
    removed = []
    try:
        names = os.listdir(loc.parent_dir)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(NAME_PREFIX + "-"):
            continue
        try:
            maker = int(name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if maker != os.getpid() and not os.path.exists(f"/proc/{maker}"):
            remove_group(os.path.join(loc.parent_dir, name))
            removed.append(name)
    return removed


def _kv(path):
    out = {}
    try:
        text = _read(path)
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def _int(path):
    try:
        return int(_read(path).strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- in the child

def usage(path, version):
    """(memory charged to the group, of which swapped out) in bytes."""
    if version == 1:
        mem = _int(os.path.join(path, "memory.usage_in_bytes")) or 0
        memsw = _int(os.path.join(path, "memory.memsw.usage_in_bytes"))
        return mem, (memsw - mem) if memsw is not None else 0
    return (_int(os.path.join(path, "memory.current")) or 0,
            _int(os.path.join(path, "memory.swap.current")) or 0)


def reset_peak(path, version):
    name = "memory.max_usage_in_bytes" if version == 1 else "memory.peak"
    try:
        _write(os.path.join(path, name), "0" if version == 1 else "reset")
    except OSError:
        pass  # v2 kernels before 6.12 cannot reset memory.peak


def set_limit(path, version, limit, swap):
    """Limit the group to `limit` bytes of memory; with swap=False no swap
    either (v1 memory+swap = limit, v2 swap.max = 0), with swap=True as much
    swap as the system has."""
    if version == 1:  # memory+swap may not go below the memory limit, so that is lowered first
        _write(os.path.join(path, "memory.limit_in_bytes"), str(limit))
        memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):
            _write(memsw, "-1" if swap else str(limit))
        elif not swap and swap_total() > 0:
            raise CgroupUnavailable("swap is on and this kernel has no memory.memsw.limit_in_bytes "
                                    "(swapaccount=0): a limit without swap cannot be set")
    else:
        _write(os.path.join(path, "memory.max"), str(limit))
        sw = os.path.join(path, "memory.swap.max")
        if os.path.exists(sw):
            _write(sw, "max" if swap else "0")


def own_limit():
    """(limit in bytes or None, where) of this process's memory cgroup, read only."""
    try:
        v1_path, v2_path = _own_cgroups()
        for fstype, root, mnt, opts, superopts in _mounts():
            v1 = v1_path is not None and fstype == "cgroup" and "memory" in superopts
            v2 = v2_path is not None and fstype == "cgroup2"
            d = _join(root, mnt, v1_path if v1 else v2_path) if v1 or v2 else None
            if not d or not os.path.isdir(d):
                continue
            if v1:
                limit = int(_read(os.path.join(d, "memory.limit_in_bytes")))
                return (None if limit >= 1 << 62 else limit), f"cgroup v1 {d}"  # unlimited: near 2^63
            raw = _read(os.path.join(d, "memory.max")).strip()
            return (None if raw == "max" else int(raw)), f"cgroup v2 {d}"
    except (OSError, ValueError) as e:
        return None, f"not read: {e}"
    return None, "no memory cgroup found"


def swap_total():
    try:
        for line in _read("/proc/meminfo").splitlines():
            if line.startswith("SwapTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def limit_self(path, version, extra, swap):
    """In the child, once its interpreter is up: limit its group to what it
    uses now plus `extra` bytes. Returns (baseline bytes, limit bytes)."""
    base, _ = usage(path, version)
    limit = base + extra
    set_limit(path, version, limit, swap)
    reset_peak(path, version)
    return base, limit
