"""Check this machine for tieredmem, and say what to change, how and why.

    python -m tieredmem doctor [--nvme-path DIR] [--no-bandwidth] [--json]

Checks userfaultfd access (and the ways to grant it), the kernel and its
userfaultfd features, transparent huge pages, the NVMe tier's directory (its
filesystem, O_DIRECT, measured sequential bandwidth, free space), /dev/shm and
DAX mounts for the PMEM tier, and the memory cgroup's limit and swap.

Each finding is ok, a warning (tieredmem works, but slower or smaller than it
could) or a failure (it cannot run as configured), with the command that
fixes it. The exit status is 0 when nothing failed (ready), 1 otherwise;
--json prints the same findings as data."""
import json
import os
import platform
import shutil
import stat

from ..bench import cgroup
from ..bench.suite import TMPFS, measure_disk, mount_of, read_text
from ..pool import Pool, default_nvme_dir
from ..sizes import format_size

OK, WARN, FAIL = "ok", "warning", "failure"
PROBE_BYTES = 256 << 20  # the bandwidth probe: a few seconds on a slow disk
THP = "/sys/kernel/mm/transparent_hugepage"


def add_arguments(parser):
    parser.add_argument("--nvme-path", default=None,
                        help="the NVMe tier's directory to check (default: run's, $TIEREDMEM_NVME_PATH or "
                             "~/.cache/tieredmem)")
    parser.add_argument("--no-bandwidth", action="store_true", help="skip measuring the disk's bandwidth")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")


def finding(check, status, found, fix=None, why=None):
    return {"check": check, "status": status, "found": found, "fix": fix, "why": why}


def _selected(mode):
    """The bracketed choice of a sysfs mode line ("always [madvise] never")."""
    if not mode or "[" not in mode:
        return mode
    return mode.split("[", 1)[1].split("]", 1)[0]


def check_userfaultfd():
    """Creating a pool opens a userfaultfd with the features the engine needs."""
    sysctl = read_text("/proc/sys/vm/unprivileged_userfaultfd")
    dev = "/dev/userfaultfd"
    dev_mode = f"{stat.S_IMODE(os.stat(dev).st_mode):o}" if os.path.exists(dev) else "absent"
    context = (f"euid {os.geteuid()}, vm.unprivileged_userfaultfd={sysctl}, {dev} mode {dev_mode}")
    try:
        with Pool(dram="4MiB", nvme=0):
            pass
    except PermissionError as e:
        return finding("userfaultfd", FAIL, f"denied ({context}): {e.strerror}",
                       fix="one of: `sudo sysctl -w vm.unprivileged_userfaultfd=1` (all users); "
                           "`sudo setfacl -m u:$USER:rw /dev/userfaultfd` (this user); or give the process "
                           "CAP_SYS_PTRACE (`sudo setcap cap_sys_ptrace+ep $(readlink -f $(which python3))`)",
                       why="tieredmem serves its pools' page faults itself, through userfaultfd")
    except OSError as e:
        return finding("userfaultfd", FAIL, f"cannot be used ({context}): {e}",
                       fix="Linux 6.8 or newer, built with CONFIG_USERFAULTFD",
                       why="the engine needs UFFDIO_MOVE and UFFDIO_POISON")
    return finding("userfaultfd", OK, f"usable, with UFFDIO_MOVE and UFFDIO_POISON ({context})")


def check_kernel():
    release = platform.release()
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        return finding("kernel", WARN, f"Linux {release}: version not understood",
                       why="userfaultfd's UFFDIO_MOVE needs Linux 6.8 or newer")
    if (major, minor) < (6, 8):
        return finding("kernel", FAIL, f"Linux {release}", fix="upgrade to Linux 6.8 or newer",
                       why="the engine moves blocks with UFFDIO_MOVE (6.8) and answers failed reads with "
                           "UFFDIO_POISON (6.6)")
    return finding("kernel", OK, f"Linux {release} (6.8 or newer: UFFDIO_MOVE, UFFDIO_POISON)")


def check_thp():
    found = []
    anon, shmem = _selected(read_text(f"{THP}/enabled")), _selected(read_text(f"{THP}/shmem_enabled"))
    if anon is None:
        found.append(finding("transparent huge pages", WARN, "not available",
                             why="the engine's I/O buffers use huge pages, so that a read of several MiB "
                                 "reaches the disk as one request (small pages split it at ~1 MiB)"))
    elif anon == "never":
        found.append(finding("transparent huge pages", WARN, f"{THP}/enabled is never",
                             fix=f"`echo madvise | sudo tee {THP}/enabled`",
                             why="the engine's I/O buffers ask for huge pages (MADV_HUGEPAGE), so that a "
                                 "read of several MiB reaches the disk as one request"))
    else:
        found.append(finding("transparent huge pages", OK, f"{THP}/enabled is {anon}"))
    if shmem in ("never", "deny", None):
        found.append(finding("shared-memory huge pages", WARN, f"{THP}/shmem_enabled is {shmem}",
                             fix=f"`echo advise | sudo tee {THP}/shmem_enabled`",
                             why="an emulated PMEM tier is a file in /dev/shm: with small pages its "
                                 "first fill runs at about 1.5 GB/s here, 3.5 GB/s with huge pages"))
    else:
        found.append(finding("shared-memory huge pages", OK, f"{THP}/shmem_enabled is {shmem}"))
    return found


def _direct_io(directory):
    """None if O_DIRECT works in directory, else why not."""
    path = os.path.join(directory, ".tieredmem-doctor-probe")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    except OSError as e:
        return e.strerror
    try:
        os.close(fd)
    finally:
        os.unlink(path)
    return None


def check_nvme_dir(directory, bandwidth):
    name = "NVMe tier directory"
    if not os.path.isdir(directory):
        return [finding(name, FAIL, f"{directory} is not a directory", fix=f"`mkdir -m 700 -p {directory}`",
                        why="the NVMe tier's slot file is made there")]
    found = []
    st = os.stat(directory)
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        found.append(finding(name, FAIL, f"{directory}: owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}",
                             fix=f"a directory of your own: `mkdir -m 700 -p DIR` and --nvme-path DIR "
                                 f"(or `chmod 700 {directory}` if it is yours)",
                             why="tier files hold the pools' data: others must not reach them"))
    mnt, fstype, source = mount_of(directory)
    where = f"{directory} on {fstype} ({source}, mounted at {mnt})"
    if fstype in TMPFS:
        found.append(finding(name, FAIL, where, fix="--nvme-path on a disk (ext4, xfs, ...)",
                             why="a tmpfs is RAM: an NVMe tier there takes the memory it should free"))
        return found
    problem = _direct_io(directory)
    if problem:
        found.append(finding("O_DIRECT", WARN, f"{where}: {problem}",
                             fix="--nvme-path on a filesystem that takes O_DIRECT (ext4, xfs)",
                             why="without O_DIRECT reads and writes go through the page cache, which takes "
                                 "DRAM outside the budget; the engine falls back to buffered I/O"))
    else:
        found.append(finding("O_DIRECT", OK, where))
    free = shutil.disk_usage(directory).free
    found.append(finding("free disk space", OK if free >= 1 << 30 else WARN, f"{format_size(free)} free in {mnt}",
                         fix=None if free >= 1 << 30 else "free disk space, or --nvme-path on a larger disk",
                         why="by default `run` sizes the NVMe tier to the free space less 10%"))
    if bandwidth and not problem:
        size = min(PROBE_BYTES, free // 4) // (8 << 20) * (8 << 20)
        disk = measure_disk(directory, size, reps=2) if size else {"error": "no room to measure"}
        if "error" in disk:
            found.append(finding("disk bandwidth", WARN, f"not measured: {disk['error']}"))
        else:
            found.append(finding("disk bandwidth", OK,
                                 f"O_DIRECT sequential write {disk['write_gbps']:.2f} GB/s, read "
                                 f"{disk['read_gbps']['median']:.2f} GB/s (1 MiB requests, "
                                 f"{format_size(size)})",
                                 why="one request at a time: the engine keeps several larger ones in "
                                     "flight and can go faster"))
    return found


def _dax_mounts():
    out = []
    for line in (read_text("/proc/mounts") or "").splitlines():
        f = line.split()
        if len(f) >= 4 and any(o == "dax" or o.startswith("dax=") and o != "dax=never" for o in f[3].split(",")):
            out.append(f[1])
    return out


def check_pmem():
    found = []
    dax = _dax_mounts()
    if dax:
        found.append(finding("PMEM (DAX)", OK, "DAX mounts: " + ", ".join(dax)))
    else:
        found.append(finding("PMEM (DAX)", OK, "no DAX mount: a PMEM tier is emulated in /dev/shm",
                             why="emulated PMEM is RAM, counted in the process's memory and its cgroup; "
                                 "use it to study tiering, not to save memory"))
    if os.path.isdir("/dev/shm"):
        shm = shutil.disk_usage("/dev/shm")
        found.append(finding("/dev/shm", OK, f"{format_size(shm.total)}, {format_size(shm.free)} free",
                             why="the most an emulated PMEM tier can hold"))
    else:
        found.append(finding("/dev/shm", WARN, "absent", fix="mount a tmpfs on /dev/shm, or --pmem-path",
                             why="an emulated PMEM tier is made there"))
    return found


def check_memory():
    limit, where = cgroup.own_limit()
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    swap_total = cgroup.swap_total()
    found = [finding("memory limit", OK,
                     f"{where}: limit {format_size(limit) if limit else 'none'}; machine {format_size(total)}",
                     why="give `run --dram` a budget below the limit less the interpreter and what stays "
                         "outside the pool (small objects, libraries): `run`'s exit summary shows it")]
    found.append(finding("swap", OK, f"{format_size(swap_total)} of swap" if swap_total else "no swap",
                         why="without swap a job over its limit is OOM-killed; tieredmem keeps its pools "
                             "within the DRAM budget and needs no swap"))
    return found


def diagnose(nvme_path, bandwidth=True):
    found = [check_userfaultfd(), check_kernel(), *check_thp(), *check_nvme_dir(nvme_path, bandwidth),
             *check_pmem(), *check_memory()]
    return {"ready": all(f["status"] != FAIL for f in found), "findings": found}


def run(args, parser) -> int:
    nvme_path = args.nvme_path or str(default_nvme_dir())
    report = diagnose(nvme_path, bandwidth=not args.no_bandwidth)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for f in report["findings"]:
            print(f"[{f['status']:>7}] {f['check']}: {f['found']}")
            if f["fix"]:
                print(f"          fix: {f['fix']}")
            if f["why"]:
                print(f"          why: {f['why']}")
        print("ready: tieredmem can run here" if report["ready"] else
              "not ready: fix the failures above")
    return 0 if report["ready"] else 1
