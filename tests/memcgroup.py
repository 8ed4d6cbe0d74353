"""Run a Python snippet under a hard memory limit in a throw-away memory cgroup.

This is a helper for the test-suite (not a test file).  It is used to prove that
a job stays under a hard DRAM budget with tieredmem, where the same job with
plain numpy is OOM-killed by the kernel.

Usage::

    from memcgroup import run_limited, CgroupUnavailable

    try:
        res = run_limited("import numpy as np; np.ones(2**27)",
                          limit_bytes=256 << 20, timeout=10)
    except CgroupUnavailable as exc:
        pytest.skip(str(exc))
    assert res.oom_killed and res.killed_by_sigkill

How it works
------------
1. Discovery (:func:`find_parent_cgroup`): the memory cgroup the *current*
   process lives in is read from ``/proc/self/cgroup`` and mapped onto the
   filesystem through ``/proc/self/mountinfo``.

   * cgroup v1 (a line like ``4:memory:/process_api/04c2...``): the child group
     is created directly under the process's own memory cgroup directory
     (e.g. ``/sys/fs/cgroup/memory/process_api/04c2.../``).
   * cgroup v2 (unified, ``0::/path``; only used when no v1 memory controller
     is mounted): the own group is used only if ``memory`` is (or can be made)
     part of its ``cgroup.subtree_control``.  A v2 group that holds processes
     cannot enable controllers for its children ("no internal processes"
     rule); that case raises :class:`CgroupUnavailable`.

2. A fresh child group ``tieredmem-test-<pid>-<counter>`` is created and the
   hard limit is set: v1 ``memory.limit_in_bytes`` and then (it must stay
   >= the former) ``memory.memsw.limit_in_bytes`` if present; v2
   ``memory.max`` and ``memory.swap.max = 0``.

3. ``sys.executable -c code`` is started with a ``preexec_fn`` that writes the
   child's own pid into the group's ``cgroup.procs`` *before* ``exec`` — so
   everything the interpreter allocates is charged to the limited group.  The
   ``preexec_fn`` only ever runs in the forked child; the calling (test)
   process is never moved.  The child gets its own session / process group so
   that a timeout can kill the whole tree.

4. After the child exits (or is killed on timeout) the OOM-kill counter
   (v1 ``memory.oom_control: oom_kill N``, v2 ``memory.events: oom_kill N``),
   the fail counter (v1 ``memory.failcnt``) and the peak usage (v1
   ``memory.max_usage_in_bytes``, v2 ``memory.peak`` if present) are read.

5. The group is removed in a ``finally`` block: any process still in it is
   SIGKILLed, ``rmdir`` is retried for a few seconds (a dying task takes a
   moment to leave), and as a last resort leftovers are moved to the parent
   group before the final ``rmdir``.

Everything requires root (or a delegated, writable cgroup subtree).  Any
reason why no limited group can be made is reported as
:class:`CgroupUnavailable` with a precise message, so tests can ``skip``.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

__all__ = [
    "CgroupUnavailable",
    "LimitedResult",
    "CgroupLocation",
    "find_parent_cgroup",
    "run_limited",
]

#: Prefix of every cgroup this module creates.
NAME_PREFIX = "tieredmem-test"

_counter = itertools.count()

# How long cleanup keeps retrying rmdir before moving leftovers to the parent.
_RMDIR_RETRY_SECONDS = 5.0


class CgroupUnavailable(Exception):
    """No memory-limited child cgroup can be created here; the message says why."""


@dataclass
class LimitedResult:
    """Outcome of one :func:`run_limited` call.

    Attributes:
        returncode: exit status as reported by :mod:`subprocess`; negative
            values mean "killed by that signal" (``-9`` == SIGKILL).  On
            timeout this is the status after we SIGKILLed the process group.
        stdout, stderr: decoded output of the child (``errors="replace"``).
        oom_killed: the kernel's OOM killer fired inside the cgroup (v1
            ``oom_kill`` in ``memory.oom_control``; v2 ``oom_kill`` in
            ``memory.events``).  On very old v1 kernels without the
            ``oom_kill`` field this falls back to "limit was hit
            (``failcnt`` > 0) and the child died of SIGKILL".
        peak_bytes: peak memory usage of the cgroup, or ``None`` if the
            kernel does not expose it (v2 without ``memory.peak``).
        timed_out: the child did not finish within ``timeout`` and was killed.
        failcnt: v1 ``memory.failcnt`` (how often usage hit the limit and
            reclaim was needed); ``None`` on v2.  Informational only — a
            non-zero value does *not* by itself mean an OOM kill, and on some
            kernels (e.g. the 6.18 test VMs) it stays 0 even after an OOM
            kill, so ``oom_killed`` relies on ``oom_kill`` instead.
        cgroup_path: filesystem path of the (now removed) cgroup.
    """

    returncode: int
    stdout: str
    stderr: str
    oom_killed: bool
    peak_bytes: int | None
    timed_out: bool
    failcnt: int | None = None
    cgroup_path: str = ""

    @property
    def killed_by_sigkill(self) -> bool:
        """True if the child was terminated by SIGKILL (OOM killer or timeout)."""
        return self.returncode == -signal.SIGKILL


@dataclass(frozen=True)
class CgroupLocation:
    """Where child memory cgroups are created.

    Attributes:
        version: 1 or 2.
        parent_dir: filesystem directory under which children are made.
    """

    version: int
    parent_dir: str


# --------------------------------------------------------------------------- #
# Discovery
# --------------------------------------------------------------------------- #

def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, value: str) -> None:
    # cgroupfs wants one write() per value; open without truncation semantics
    # mattering, and no buffering so errors surface on this call.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _mounts() -> list[tuple[str, str, str, str]]:
    """Return (fstype, mount_root, mount_point, super_options) for cgroup mounts."""
    out = []
    try:
        text = _read("/proc/self/mountinfo")
    except OSError:
        return out
    for line in text.splitlines():
        # id parent maj:min root mountpoint opts [optional...] - fstype src superopts
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        pre_f = pre.split()
        post_f = post.split()
        if len(pre_f) < 5 or len(post_f) < 3:
            continue
        fstype = post_f[0]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        root = _unescape(pre_f[3])
        mnt = _unescape(pre_f[4])
        out.append((fstype, root, mnt, post_f[2]))
    return out


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return (s.replace("\\040", " ").replace("\\011", "\t")
             .replace("\\012", "\n").replace("\\134", "\\"))


def _own_cgroups() -> tuple[str | None, str | None]:
    """Return (v1 memory path, v2 unified path) from /proc/self/cgroup."""
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


def _join_mount(mount_root: str, mount_point: str, cg_path: str) -> str | None:
    """Map a cgroup path (relative to the hierarchy root) into a mount."""
    mount_root = mount_root.rstrip("/") or "/"
    if mount_root == "/":
        rel = cg_path
    elif cg_path == mount_root or cg_path.startswith(mount_root + "/"):
        rel = cg_path[len(mount_root):]
    else:
        return None  # our group is not visible through this mount
    return os.path.normpath(mount_point + "/" + rel.lstrip("/"))


def _check_writable_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise CgroupUnavailable(f"{what} {path} does not exist")
    if not os.access(path, os.W_OK):
        raise CgroupUnavailable(
            f"{what} {path} is not writable (uid {os.geteuid()}; "
            "need root or a delegated cgroup subtree)")


def _find_v1(cg_path: str, mounts) -> CgroupLocation:
    candidates = [m for m in mounts
                  if m[0] == "cgroup" and "memory" in m[3].split(",")]
    if not candidates and os.path.isdir("/sys/fs/cgroup/memory"):
        candidates = [("cgroup", "/", "/sys/fs/cgroup/memory", "memory")]
    if not candidates:
        raise CgroupUnavailable(
            "/proc/self/cgroup lists a v1 memory cgroup but no v1 memory "
            "controller mount was found in /proc/self/mountinfo")
    for _, root, mnt, _ in candidates:
        d = _join_mount(root, mnt, cg_path)
        if d and os.path.isdir(d):
            if "ro" in _mount_opts(mnt):
                raise CgroupUnavailable(f"cgroup v1 memory mount {mnt} is read-only")
            _check_writable_dir(d, "own cgroup v1 memory directory")
            if not os.path.exists(os.path.join(d, "memory.limit_in_bytes")):
                raise CgroupUnavailable(f"{d} has no memory.limit_in_bytes")
            return CgroupLocation(1, d)
    raise CgroupUnavailable(
        f"own v1 memory cgroup {cg_path!r} is not visible under any memory "
        f"mount ({', '.join(m[2] for m in candidates)})")


def _find_v2(cg_path: str, mounts) -> CgroupLocation:
    candidates = [m for m in mounts if m[0] == "cgroup2"]
    if not candidates:
        raise CgroupUnavailable(
            "no v1 memory controller and no cgroup2 mount in /proc/self/mountinfo")
    errors = []
    for _, root, mnt, _ in candidates:
        d = _join_mount(root, mnt, cg_path)
        if not d or not os.path.isdir(d):
            errors.append(f"own v2 group {cg_path!r} not visible under {mnt}")
            continue
        try:
            controllers = _read(os.path.join(d, "cgroup.controllers")).split()
        except OSError as exc:
            errors.append(f"cannot read {d}/cgroup.controllers: {exc}")
            continue
        if "memory" not in controllers:
            errors.append(
                f"cgroup v2 group {d} has no memory controller available "
                f"(cgroup.controllers: {' '.join(controllers) or '<empty>'})")
            continue
        if "ro" in _mount_opts(mnt):
            errors.append(f"cgroup2 mount {mnt} is read-only")
            continue
        _check_writable_dir(d, "own cgroup v2 directory")
        stc = os.path.join(d, "cgroup.subtree_control")
        if "memory" not in _read(stc).split():
            try:
                _write(stc, "+memory")
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    errors.append(
                        f"cannot enable the memory controller in {stc}: the "
                        "group contains processes (cgroup v2 'no internal "
                        "processes' rule), so children cannot get memory "
                        "limits")
                else:
                    errors.append(f"cannot enable +memory in {stc}: {exc}")
                continue
        return CgroupLocation(2, d)
    raise CgroupUnavailable("; ".join(errors))


def _mount_opts(mount_point: str) -> list[str]:
    try:
        text = _read("/proc/self/mountinfo")
    except OSError:
        return []
    for line in text.splitlines():
        f = line.split()
        if len(f) > 5 and _unescape(f[4]) == mount_point:
            return f[5].split(",")
    return []


def find_parent_cgroup() -> CgroupLocation:
    """Locate the directory under which limited child groups will be created.

    Prefers a cgroup v1 memory hierarchy; falls back to cgroup v2.
    Raises :class:`CgroupUnavailable` with the reason if neither works.
    """
    if sys.platform != "linux":
        raise CgroupUnavailable(f"cgroups need Linux (platform is {sys.platform})")
    v1_path, v2_path = _own_cgroups()
    mounts = _mounts()
    if v1_path is not None:
        return _find_v1(v1_path, mounts)
    if v2_path is not None:
        return _find_v2(v2_path, mounts)
    raise CgroupUnavailable(
        "/proc/self/cgroup has neither a v1 memory line nor a v2 '0::' line")


# --------------------------------------------------------------------------- #
# Child cgroup lifecycle
# --------------------------------------------------------------------------- #

def _make_child(parent: str) -> str:
    while True:
        name = f"{NAME_PREFIX}-{os.getpid()}-{next(_counter)}"
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue  # stale group from an earlier run with a reused pid
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise CgroupUnavailable(f"cgroupfs is read-only: cannot mkdir {path}") from exc
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise CgroupUnavailable(
                    f"permission denied creating {path} (uid {os.geteuid()})") from exc
            raise CgroupUnavailable(f"cannot create cgroup {path}: {exc}") from exc


def _set_limit(cg: str, version: int, limit_bytes: int) -> None:
    try:
        if version == 1:
            # memsw (memory+swap) must be >= limit_in_bytes, so lower the
            # plain limit first.
            _write(os.path.join(cg, "memory.limit_in_bytes"), str(limit_bytes))
            memsw = os.path.join(cg, "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):
                _write(memsw, str(limit_bytes))
        else:
            _write(os.path.join(cg, "memory.max"), str(limit_bytes))
            swap = os.path.join(cg, "memory.swap.max")
            if os.path.exists(swap):
                _write(swap, "0")
    except OSError as exc:
        raise CgroupUnavailable(f"cannot set memory limit in {cg}: {exc}") from exc


def _procs(cg: str) -> list[int]:
    try:
        return [int(x) for x in _read(os.path.join(cg, "cgroup.procs")).split()]
    except OSError:
        return []


def _kv_file(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
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


def _int_file(path: str) -> int | None:
    try:
        return int(_read(path).strip())
    except (OSError, ValueError):
        return None


def _read_stats(cg: str, version: int) -> tuple[int | None, int | None, int | None]:
    """Return (oom_kill count or None if unknown, failcnt, peak_bytes)."""
    if version == 1:
        oom = _kv_file(os.path.join(cg, "memory.oom_control")).get("oom_kill")
        failcnt = _int_file(os.path.join(cg, "memory.failcnt"))
        peak = _int_file(os.path.join(cg, "memory.max_usage_in_bytes"))
        return oom, failcnt, peak
    oom = _kv_file(os.path.join(cg, "memory.events")).get("oom_kill")
    peak = _int_file(os.path.join(cg, "memory.peak"))
    return oom, None, peak


def _remove_child(cg: str) -> None:
    """Remove cgroup ``cg``; kill stragglers; never raise (best effort)."""
    if not os.path.isdir(cg):
        return
    deadline = time.monotonic() + _RMDIR_RETRY_SECONDS
    delay = 0.01
    while True:
        for pid in _procs(cg):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            os.rmdir(cg)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                break
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    # Last resort: move leftovers to the parent so the directory can go.
    parent_procs = os.path.join(os.path.dirname(cg), "cgroup.procs")
    for pid in _procs(cg):
        try:
            _write(parent_procs, str(pid))
        except OSError:
            pass
    try:
        os.rmdir(cg)
    except OSError as exc:
        print(f"memcgroup: WARNING: could not remove cgroup {cg}: {exc}",
              file=sys.stderr)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- #
# Public entry point
# --------------------------------------------------------------------------- #

def run_limited(code: str, limit_bytes: int, timeout: float,
                env: dict | None = None, cwd: str | None = None) -> LimitedResult:
    """Run ``sys.executable -c code`` in a fresh memory cgroup limited to ``limit_bytes``.

    Args:
        code: Python source passed to ``-c``.
        limit_bytes: hard memory limit (no swap allowed).
        timeout: seconds to wait; on expiry the child's process group is
            SIGKILLed and ``timed_out`` is set.
        env: environment for the child (default: inherit ``os.environ``).
        cwd: working directory for the child.

    Returns:
        :class:`LimitedResult`.

    Raises:
        CgroupUnavailable: if no limited cgroup can be created/entered.
    """
    if limit_bytes <= 0:
        raise ValueError("limit_bytes must be positive")
    loc = find_parent_cgroup()
    cg = _make_child(loc.parent_dir)
    try:
        _set_limit(cg, loc.version, limit_bytes)
        procs_file = os.path.join(cg, "cgroup.procs")

        def _enter_cgroup() -> None:  # runs in the forked child only
            _write(procs_file, str(os.getpid()))

        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd,
                preexec_fn=_enter_cgroup,
                start_new_session=True,
            )
        except subprocess.SubprocessError as exc:
            # preexec_fn failed: the child could not join the cgroup.
            raise CgroupUnavailable(
                f"child could not be moved into {procs_file} ({exc})") from exc

        timed_out = False
        try:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                out, err = proc.communicate()
        except BaseException:
            # e.g. KeyboardInterrupt: don't leave the child running.
            _kill_group(proc)
            proc.wait()
            raise

        oom, failcnt, peak = _read_stats(cg, loc.version)
        returncode = proc.returncode
        if oom is not None:
            oom_killed = oom > 0
        else:
            oom_killed = bool(failcnt) and returncode == -signal.SIGKILL and not timed_out
        return LimitedResult(
            returncode=returncode,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            oom_killed=oom_killed,
            peak_bytes=peak,
            timed_out=timed_out,
            failcnt=failcnt,
            cgroup_path=cg,
        )
    finally:
        _remove_child(cg)
