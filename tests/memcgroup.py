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

The cgroup work is the benchmark's (:mod:`tieredmem.bench.cgroup`): the group
``tieredmem-test-<pid>-<counter>-run`` is made under the process's own v1
memory cgroup or v2 group, limited (no swap), and ``sys.executable -c code``
joins it before ``exec`` so everything the interpreter allocates is charged to
it; the calling process is never moved.  The child gets its own session so a
timeout kills the whole tree.  The group is removed afterwards, stragglers
killed.

Everything requires root (or a delegated, writable cgroup subtree).  Any
reason why no limited group can be made is reported as
:class:`CgroupUnavailable` with a precise message, so tests can ``skip``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass

from tieredmem.bench import cgroup
from tieredmem.bench.cgroup import CgroupUnavailable
from tieredmem.bench.cgroup import Location as CgroupLocation

__all__ = [
    "CgroupUnavailable",
    "LimitedResult",
    "CgroupLocation",
    "find_parent_cgroup",
    "run_limited",
]

#: Prefix of every cgroup this module creates (the benchmark's own are left to it).
NAME_PREFIX = "tieredmem-test"


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


def find_parent_cgroup() -> CgroupLocation:
    """Locate the directory under which limited child groups will be created.

    Prefers a cgroup v1 memory hierarchy; falls back to cgroup v2.
    Raises :class:`CgroupUnavailable` with the reason if neither works.
    """
    return cgroup.discover()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass


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
    group = cgroup.MemCgroup(find_parent_cgroup(), prefix=NAME_PREFIX)
    try:
        try:
            cgroup.set_limit(group.path, group.version, limit_bytes, swap=False)
        except OSError as exc:
            raise CgroupUnavailable(f"cannot set memory limit in {group.path}: {exc}") from exc
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd,
                preexec_fn=group.add_self_fn(),
                start_new_session=True,
            )
        except subprocess.SubprocessError as exc:
            # preexec_fn failed: the child could not join the cgroup.
            raise CgroupUnavailable(
                f"child could not be moved into cgroup {group.path} ({exc})") from exc

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

        stats = group.stats()
        returncode = proc.returncode
        if stats["oom_kill"] is not None:
            oom_killed = stats["oom_kill"] > 0
        else:
            oom_killed = bool(stats["failcnt"]) and returncode == -signal.SIGKILL and not timed_out
        return LimitedResult(
            returncode=returncode,
            stdout=out.decode(errors="replace"),
            stderr=err.decode(errors="replace"),
            oom_killed=oom_killed,
            peak_bytes=stats["peak_bytes"],
            timed_out=timed_out,
            failcnt=stats["failcnt"],
            cgroup_path=group.path,
        )
    finally:
        group.remove()
