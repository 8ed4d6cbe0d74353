"""A host group's table: one small file in /dev/shm, mode 0600, named
tieredmem-UID-share-NAME, that the group's members map and change under a
lock. No daemon: each member's thread does its part. docs/sharing.md,
"Protocol".

Locks are open file description locks (fcntl F_OFD_*), which the kernel
drops when the last descriptor of their open goes, so a member killed with
SIGKILL holds none:
- byte TABLE_LOCK: the table's lock (write to change it, read to read it);
- byte LEASE + i: held by the live member of slot i, for as long as its
  process lives. A slot in use whose byte nobody holds is a dead member's.
Each member opens the file itself (its own open, so its locks conflict
with those of another member of the same process). A forked child closes
its copies (os.register_at_fork), so it keeps no dead parent's lease."""
import ctypes
import errno
import fcntl
import mmap
import os
import re
import stat
import struct
import threading
import time
from contextlib import contextmanager

from .. import published

MAGIC = 0x50485354  # "TSHP"
VERSION = 1
SLOTS = 32
POINTS = 16        # amounts on a curve: k * step, k = 1..POINTS
STEPS = 32         # step = budget / STEPS
NOTE = 96
TABLE_LOCK = 0
LEASE = 1 << 20
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
READ_LOCK_WAIT_S = 0.1  # a reader waits this long for the lock, then reads as it is


class Slot(ctypes.Structure):
    """A member. The member writes all but `target`, which the arbiter writes."""
    _fields_ = [
        ("pid", ctypes.c_int64),            # 0: a free slot
        ("start_time", ctypes.c_uint64),    # of its process (/proc/PID/stat field 22)
        ("pool", ctypes.c_uint64),          # its pool's number in its process (published files'), 0 if unpublished
        ("block_size", ctypes.c_uint64),
        ("floor", ctypes.c_uint64),
        ("ceiling", ctypes.c_uint64),
        ("weight", ctypes.c_double),
        ("grant", ctypes.c_uint64),         # DRAM it may hold: its pool's budget is at most this
        ("target", ctypes.c_uint64),        # what the arbiter wants it to hold
        ("joined_ns", ctypes.c_uint64),     # CLOCK_MONOTONIC, as all times here
        ("heartbeat_ns", ctypes.c_uint64),  # its thread's last look at the table (every POLL_S)
        ("moved_ns", ctypes.c_uint64),      # its pool's budget last changed
        ("window_ns", ctypes.c_uint64),     # its curve was measured from then to heartbeat_ns
        ("mature", ctypes.c_uint32),        # sampling had looked at all its DRAM since it moved
        ("moves", ctypes.c_uint32),         # its budget changes
        ("misses", ctypes.c_double),        # bytes/s read from its lower tiers, last period
        ("stall", ctypes.c_double),         # share of the time its threads waited on faults, last period
        ("resident", ctypes.c_uint64),      # bytes in DRAM
        ("free", ctypes.c_uint64),          # bytes of its budget it does not use
        ("idle", ctypes.c_uint64),          # bytes parked a period or more and not used since
        ("cost", ctypes.c_double),          # seconds per second its measurement took (census and curve)
        ("gain", ctypes.c_double * POINTS), # bytes/s saved with k steps more (not weighted)
        ("loss", ctypes.c_double * POINTS), # bytes/s added with k steps less
        ("note", ctypes.c_char * NOTE),     # why it is not where it was told to be, if it is not
    ]


class Header(ctypes.Structure):
    _fields_ = [
        ("magic", ctypes.c_uint32),
        ("version", ctypes.c_uint32),
        ("size", ctypes.c_uint64),
        ("budget", ctypes.c_uint64),        # the group's DRAM
        ("period_ns", ctypes.c_uint64),
        ("step", ctypes.c_uint64),          # budget / STEPS: what moves at a time
        ("arbitrated_ns", ctypes.c_uint64),
        ("arbitrations", ctypes.c_uint64),
        ("moves", ctypes.c_uint64),         # DRAM moves made by arbitration, in all
        ("moved_bytes", ctypes.c_uint64),
        ("slots", Slot * SLOTS),
    ]


SIZE = ctypes.sizeof(Header)


def check_name(name) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"share: a group name is 1 to 64 letters, digits, '_', '.' or '-' (not first), got {name!r}")
    return name


def path_of(name: str) -> str:
    """Beside the published statistics (publish.c)."""
    return os.path.join(published.directory(), f"tieredmem-{os.geteuid()}-share-{name}")


def names() -> list:
    """The groups of this user that have a table, by name."""
    prefix = f"tieredmem-{os.geteuid()}-share-"
    return sorted(n[len(prefix):] for n in os.listdir(published.directory())
                  if n.startswith(prefix) and NAME.match(n[len(prefix):]))


def step_of(budget: int) -> int:
    """What moves at a time: budget / STEPS, in 64 KiB."""
    return max(budget // STEPS // (64 << 10), 1) * (64 << 10)


def now_ns() -> int:
    return time.monotonic_ns()


def _flock(kind: int, start: int) -> bytes:
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, start, 1, 0)


def _check_file(fd: int, path: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(errno.EPERM, "share: the group's table is not a private file of this user", path)
    if st.st_size != SIZE:
        raise ValueError(f"share: {path} is not a group table of this version of tieredmem ({st.st_size} bytes, "
                         f"expected {SIZE})")


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def _map_shared(fd: int) -> int:
    """The table mapped shared and writable, not into forked children: their
    mapping would keep the open, and with it the member's lease, alive after
    the member died. (Python's mmap keeps a duplicate of the descriptor, which
    a child would inherit for the same reason: the C library's is used.)"""
    addr = _libc.mmap(None, SIZE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        err = ctypes.get_errno()
        raise OSError(err, f"share: cannot map the group's table: {os.strerror(err)}")
    _libc.madvise(addr, SIZE, mmap.MADV_DONTFORK)
    return addr


class Table:
    """An open group table: mapped for a member, a copy for a reader."""

    def __init__(self, fd: int, path: str, writable: bool):
        self.fd, self.path = fd, path
        self._threads = threading.Lock()  # a process's threads share one open: its lock does not tell them apart
        self._addr = _map_shared(fd) if writable else None
        self.h = Header.from_address(self._addr) if writable else Header.from_buffer_copy(os.pread(fd, SIZE, 0))
        if self.h.magic != MAGIC or self.h.version != VERSION or self.h.size != SIZE:
            self.close()
            raise ValueError(f"share: {path} was made by another version of tieredmem (version {self.h.version})")

    @classmethod
    def open(cls, name: str, budget=None, period_s=None) -> "Table":
        """The group's table for a member, made with `budget` and `period_s`
        if there is none (ValueError if there is none and no budget)."""
        path = path_of(name)
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                if budget is None:
                    raise ValueError(f"share: group {name!r} does not exist yet; its first member gives its DRAM "
                                     f"(host_dram, --host-dram or TIEREDMEM_HOST_DRAM)") from None
                cls._create(path, budget, period_s)  # or another process made it first: open that
                continue
            try:
                _check_file(fd, path)
                return cls(fd, path, writable=True)
            except BaseException:
                os.close(fd)
                raise

    @staticmethod
    def _create(path: str, budget: int, period_s: float) -> None:
        """Make the table whole under a private name, then link it into
        place, so nobody maps a half-made one; if another process linked
        one first, that one stays."""
        tmp = f"{path}.{os.getpid()}.{now_ns()}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            h = Header(magic=MAGIC, version=VERSION, size=SIZE, budget=budget, period_ns=int(period_s * 1e9),
                       step=step_of(budget))
            os.write(fd, bytes(h))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.close(fd)
            os.unlink(tmp)

    @classmethod
    def reader(cls, name: str) -> "Table":
        """A copy of the table, taken under its read lock (or as it is, if
        a member holds the lock for longer than READ_LOCK_WAIT_S)."""
        path = path_of(name)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _check_file(fd, path)
            deadline = time.monotonic() + READ_LOCK_WAIT_S
            while not _try_lock(fd, fcntl.F_RDLCK, TABLE_LOCK) and time.monotonic() < deadline:
                time.sleep(0.005)
            return cls(fd, path, writable=False)
        except BaseException:
            os.close(fd)
            raise

    @contextmanager
    def locked(self):
        with self._threads:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK, TABLE_LOCK))
            try:
                yield self.h
            finally:
                fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, TABLE_LOCK))

    def unlinked(self) -> bool:
        """Whether the file was removed (its last member left) since it was
        opened: a member joining must open the new one."""
        return os.fstat(self.fd).st_nlink == 0

    def take_lease(self, i: int) -> bool:
        return _try_lock(self.fd, fcntl.F_WRLCK, LEASE + i)

    def drop_lease(self, i: int) -> None:
        fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, LEASE + i))

    def alive(self, i: int) -> bool:
        """Whether slot i's member lives: someone holds its lease (not this
        open: never ask of one's own slot)."""
        got = fcntl.fcntl(self.fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, LEASE + i))
        return struct.unpack("hhqqi4x", got)[0] != fcntl.F_UNLCK

    def members(self) -> list:
        """(index, slot) of the slots in use."""
        return [(i, s) for i, s in enumerate(self.h.slots) if s.pid]

    def close(self) -> None:
        """Unmap and close it. Precondition: nobody uses self.h any more
        (the member has left, or never joined)."""
        if self.fd >= 0:
            del self.h
            if self._addr is not None:
                _libc.munmap(self._addr, SIZE)
            os.close(self.fd)
            self.fd = -1


def _try_lock(fd: int, kind: int, start: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(kind, start))
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def groups() -> list:
    """status() of every group of this user that has a table."""
    return [g for g in map(status, names()) if g is not None]


def member_view(group: dict, member: dict) -> dict:
    """A member's figures with its group's, as a pool's snapshot shows them
    ("share" in published.processes())."""
    keep = ("floor", "ceiling", "weight", "grant", "target", "misses", "stall", "gain", "loss", "idle", "free",
            "moves", "cost", "mature", "note", "heartbeat_s_ago")
    return {"group": group["name"], "budget": group["budget"], "granted": group["granted"],
            "period": group["period"], "step": group["step"], **{k: member[k] for k in keep}}


def status(name: str) -> dict:
    """What a group's table says now, for `top`, `stats` and the metrics: its
    budget, period, moves, and each member's figures; None if it is gone."""
    try:
        t = Table.reader(name)
    except (FileNotFoundError, ValueError, PermissionError):
        return None
    try:
        h, now = t.h, now_ns()
        members = []
        for i, s in t.members():
            members.append({
                "slot": i, "pid": int(s.pid), "pool": int(s.pool), "alive": t.alive(i),
                "floor": int(s.floor), "ceiling": int(s.ceiling), "weight": float(s.weight),
                "grant": int(s.grant), "target": int(s.target), "resident": int(s.resident),
                "free": int(s.free), "idle": int(s.idle), "misses": float(s.misses), "stall": float(s.stall),
                "gain": list(s.gain), "loss": list(s.loss), "cost": float(s.cost),
                "moves": int(s.moves), "mature": bool(s.mature),
                "heartbeat_s_ago": (now - s.heartbeat_ns) / 1e9 if s.heartbeat_ns else None,
                "note": s.note.decode(errors="replace"),
            })
        return {"name": name, "budget": int(h.budget), "period": h.period_ns / 1e9, "step": int(h.step),
                "granted": sum(m["grant"] for m in members), "moves": int(h.moves),
                "moved_bytes": int(h.moved_bytes), "arbitrations": int(h.arbitrations), "members": members}
    finally:
        t.close()
