"""Reading the statistics that pools publish (csrc/publish.c; the layout is
tm_pub in tieredmem.h, read through cffi): a snapshot of each pool of every
tieredmem process of this user, or of the processes named.

A file whose process is gone (killed: it could not remove its file) or
whose pid now belongs to another process is removed here. A file that stays
mid-write is reported stale, without figures; one not rewritten for
STALE_AFTER_S (its process stopped, or its background thread stuck) keeps its
last figures, marked stale."""
import mmap
import os
import stat
import time

from ._engine import ffi, lib
from .pool import allocation_dict, resident_bytes, stats_dict

TORN_RETRY_S = 0.1  # how long a copy is retried while the engine writes (it takes microseconds)
STALE_AFTER_S = 5.0  # a pool's background rewrites its file every 50 ms


def directory() -> str:
    return os.fsdecode(ffi.string(lib.tm_publish_dir()))


def files(pids=None) -> list:
    """(pid, pool, path) of this user's published files, of the processes
    `pids` only if given, in order."""
    prefix = f"tieredmem-{os.geteuid()}-"  # publish.c names them tieredmem-UID-PID-POOL
    found = []
    for name in os.listdir(directory()):
        pid, _, pool = name[len(prefix):].partition("-")
        if name.startswith(prefix) and pid.isdigit() and pool.isdigit() and (pids is None or int(pid) in pids):
            found.append((int(pid), int(pool), os.path.join(directory(), name)))
    return sorted(found)


def start_time(pid: int):
    """Process pid's start (clock ticks after boot, /proc/PID/stat field
    22), or None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # from field 3; the command (2) may hold anything
    return None if fields[0] == "Z" else int(fields[22 - 3])


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def read(path):
    """A consistent copy of the tm_pub in file `path` (a cdata), or None if
    it stayed mid-write for TORN_RETRY_S. OSError if it cannot be opened;
    ValueError if it is not a file of this layout."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        size = ffi.sizeof("tm_pub")
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size != size:
            raise ValueError(f"{path}: not a published tm_pub of this user and this version ({st.st_size} bytes, "
                             f"expected {size})")
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    shared = ffi.from_buffer("tm_pub *", m)
    out = ffi.new("tm_pub *")
    try:
        deadline = time.monotonic() + TORN_RETRY_S
        while lib.tm_pub_read(shared, out) != 0:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.001)
    finally:
        ffi.release(shared)
        m.close()
    if out.magic != lib.TM_PUB_MAGIC or out.version != lib.TM_PUB_VERSION or out.size != size:
        raise ValueError(f"{path}: written by another version of tieredmem (version {out.version})")
    return out


def remove(path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # another reader was first


def snapshot(pid: int, pool: int, path):
    """The published figures of one pool as a dict, or None if its file is
    gone or stale (then it is removed)."""
    try:
        pub = read(path)
    except FileNotFoundError:
        return None  # its pool was released meanwhile
    alive = start_time(pid)
    if alive is None or (pub is not None and pub.start_time != alive):
        remove(path)
        return None
    if pub is None:
        return {"pool": pool, "stale": f"mid-write for more than {TORN_RETRY_S} s: its process may be stopped"}
    age = (time.monotonic_ns() - pub.updated_ns) / 1e9 if pub.updated_ns else None
    try:
        rss = resident_bytes(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return {
        "pool": int(pub.pool),
        "stale": f"not updated for {age:.0f} s" if age is not None and age > STALE_AFTER_S else None,
        "updated_s_ago": age,
        "policy": ffi.string(pub.policy).decode(errors="replace"),
        "block_size": int(pub.block_size),
        "last_error": ffi.string(pub.last_error).decode(errors="replace"),
        "live_allocations": int(pub.live_allocations),
        "stats": stats_dict(pub.stats, rss),
        "rates": {name: float(getattr(pub.rates, name)) for name, _ in ffi.typeof("tm_pub_rates").fields},
        "arrays": [allocation_dict(pub.arrays[i]) for i in range(pub.narrays)],
    }


def processes(pids=None) -> list:
    """Every process of this user that publishes pools (or those of `pids`),
    in pid order: {"pid", "command", "pools": [snapshot, ...]}; a pool in a
    host group has its group's and its own figures there as "share"
    (docs/sharing.md), else None."""
    from .sharing import table  # it reads this module's directory and pids
    shares = {(m["pid"], m["pool"]): table.member_view(g, m) for g in table.groups() for m in g["members"]}
    by_pid = {}
    for pid, pool, path in files(pids):
        try:
            snap = snapshot(pid, pool, path)
        except ValueError:
            continue  # another version's file: its own tieredmem reads it
        if snap is not None:
            snap["share"] = shares.get((pid, snap["pool"]))
            by_pid.setdefault(pid, []).append(snap)
    return [{"pid": pid, "command": command(pid), "pools": pools} for pid, pools in sorted(by_pid.items())]


def nothing_published(pids=None) -> str:
    """Why no pool was found for `pids` (None: any process of this user)."""
    who = "no process of this user" if pids is None else "no process " + ", ".join(map(str, pids))
    return f"{who} publishes tieredmem pools (they do unless created with publish=False or TIEREDMEM_PUBLISH=0)"
