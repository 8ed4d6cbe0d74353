"""Kernel swap for the benchmark: a swap file on the NVMe tier's disk.

`SwapFile.create()` makes the file (fallocate + mkswap) once; `on()` and
`off()` enable it around each run of the swap system only, so that no other
process on the machine swaps to it meanwhile (the other systems' cgroups
also forbid swap: memory+swap = memory). The file is swapped off and deleted
by `remove()`, which also runs at exit and on SIGTERM/SIGHUP; a file left by
a benchmark that was SIGKILLed is removed by the next one (`cleanup_stale`).

When swap cannot be used (not root, no mkswap, a filesystem that refuses swap
files, ...), `create()`/`on()` raise SwapUnavailable with the reason, and the
system is reported "not run: <reason>". TIEREDMEM_BENCH_FORCE_NO_SWAP=1 makes
them raise as if swapon were refused (a test hook).
"""
import atexit
import ctypes
import ctypes.util
import errno
import os
import shutil
import subprocess

PREFIX = "tieredmem-bench-swap-"
FORCE_ENV = "TIEREDMEM_BENCH_FORCE_NO_SWAP"
SWAP_FLAG_PREFER = 0x8000
SWAP_PRIO = 32767

_libc = None


class SwapUnavailable(Exception):
    """Kernel swap cannot be used here; the message says why."""


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _swapon(path):
    if _c().swapon(os.fsencode(path), SWAP_FLAG_PREFER | SWAP_PRIO) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"swapon: {os.strerror(e)}", path)


def _swapoff(path):
    if _c().swapoff(os.fsencode(path)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"swapoff: {os.strerror(e)}", path)


def active_swaps():
    """[(path, size bytes, used bytes)] from /proc/swaps."""
    out = []
    try:
        lines = open("/proc/swaps").read().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        if len(f) >= 4:
            out.append((f[0].replace("\\040", " "), int(f[2]) * 1024, int(f[3]) * 1024))
    return out


class SwapFile:
    def __init__(self, directory, size):
        self.path = os.path.join(os.fspath(directory), f"{PREFIX}{os.getpid()}")
        self.size = int(size) // 4096 * 4096
        self.active = False
        self.created = False
        self._exit_hook = None

    def create(self):
        """Make the swap file; SwapUnavailable if the machine will not swap."""
        if os.environ.get(FORCE_ENV, "") not in ("", "0"):
            raise SwapUnavailable(f"swapon: Operation not permitted (forced by {FORCE_ENV})")
        if os.geteuid() != 0:
            raise SwapUnavailable(f"swapon needs root (CAP_SYS_ADMIN); running as uid {os.geteuid()}")
        mkswap = shutil.which("mkswap") or next((p for p in ("/sbin/mkswap", "/usr/sbin/mkswap")
                                                 if os.path.exists(p)), None)
        if mkswap is None:
            raise SwapUnavailable("mkswap not found")
        free = shutil.disk_usage(os.path.dirname(self.path)).free
        if self.size > free * 0.9:
            raise SwapUnavailable(f"the disk has {free >> 20} MiB free, the swap file needs {self.size >> 20} MiB")
        self._exit_hook = self.remove
        atexit.register(self._exit_hook)
        self.created = True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
            finally:
                os.close(fd)
            res = subprocess.run([mkswap, self.path], capture_output=True, text=True)
            if res.returncode != 0:
                raise SwapUnavailable(f"mkswap failed: {(res.stderr or res.stdout).strip()[-200:]}")
            # One on/off now, so that a refusal is known before any run.
            self.on()
            self.off()
        except OSError as exc:
            self.remove()
            raise SwapUnavailable(f"{exc.strerror or exc} ({self.path})") from None
        except BaseException:
            self.remove()
            raise
        return self

    def on(self):
        if not self.active:
            _swapon(self.path)
            self.active = True

    def off(self):
        if self.active:
            _swapoff(self.path)
            self.active = False

    def remove(self):
        """Swap off and delete; safe to call more than once."""
        try:
            if self.active or any(p == self.path for p, _, _ in active_swaps()):
                self.active = True
                self.off()
        except OSError as exc:
            print(f"tieredmem bench: WARNING: {exc}; swap file {self.path} left in place", flush=True)
            return
        if self.created:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.created = False
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
            self._exit_hook = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def cleanup_stale(directory):
    """Swap off and delete swap files of earlier benchmark processes that are gone."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            pid = int(name[len(PREFIX):])
        except ValueError:
            continue
        if pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
            continue
        path = os.path.join(directory, name)
        try:
            if any(os.path.realpath(p) == os.path.realpath(path) for p, _, _ in active_swaps()):
                _swapoff(path)
            os.unlink(path)
            removed.append(path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                print(f"tieredmem bench: WARNING: cannot remove stale swap file {path}: {exc}", flush=True)
    return removed
