"""Pool: the Python face of one engine instance (csrc/arena.c)."""
import errno
import mmap
import os
import pathlib
import shutil
import stat
import sysconfig
import weakref

import numpy as np

from ._engine import ffi, lib
from . import malloc, numpy_alloc, owners
from .numpy_alloc import _init, use
from .sizes import parse_size



def _enum_names(enum, prefix):
    """The names of a C enum of tieredmem.h by value, without the prefix, lower-cased."""
    return {value: name[len(prefix):].lower() for value, name in sorted(ffi.typeof(enum).elements.items())}


TIERS = tuple(_enum_names("enum tm_tier_id", "TM_").values())  # indexed by tier id
# Every scalar field of tm_stats, in the header's order (the per-tier
# structs are reported apart).
_STAT_COUNTERS = tuple(name for name, field in ffi.typeof("tm_stats").fields if field.type.kind == "primitive")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
POLICIES = ("lru", "fifo", "hotness")
DEFAULT_POLICY = "lru"
DEFAULT_SAMPLING = 0.01  # share of the time hint sampling may cost
ADVICE = {name: value for value, name in _enum_names("enum tm_advice", "TM_ADV_").items()}
# Emulated PMEM: latency per request (ns) and bandwidth (GB/s) of reads and
# writes. "optane": first-generation Optane DC PMM, one DIMM (Izraelevitz et
# al., 2019: ~300 ns read latency, ~6.6 GB/s read, ~2.3 GB/s write).
# "cxl": a CXL.mem expander (~250 ns more than local DRAM, ~20 GB/s).
PMEM_PRESETS = {
    "optane": {"read_ns": 300, "write_ns": 100, "read_gbps": 6.6, "write_gbps": 2.3},
    "cxl": {"read_ns": 250, "write_ns": 250, "read_gbps": 20.0, "write_gbps": 20.0},
}


def policy_names() -> tuple:
    """Names Pool(policy=...) accepts; a tieredmem.Policy instance also works."""
    return POLICIES


def parse_pmem_emulation(spec) -> dict:
    """A preset name or "read_ns=N,write_ns=N,read_gbps=X,write_gbps=X"
    (any subset) as a dict of those four keys."""
    if isinstance(spec, dict):
        items = dict(spec)
    elif spec in PMEM_PRESETS:
        return dict(PMEM_PRESETS[spec])
    elif isinstance(spec, str):
        items = {}
        for part in filter(None, (x.strip() for x in spec.split(","))):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"pmem_emulation: expected a preset ({', '.join(PMEM_PRESETS)}) or key=value "
                                 f"pairs, got {spec!r}")
            items[key.strip()] = value.strip()
    else:
        raise TypeError(f"pmem_emulation: expected a string or dict, got {type(spec).__name__}")
    out = dict.fromkeys(PMEM_PRESETS["optane"], 0)
    for key, value in items.items():
        if key not in out:
            raise ValueError(f"pmem_emulation: unknown key {key!r} (known: {', '.join(out)})")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"pmem_emulation: {key} must be a number, got {value!r}") from None
        if not v >= 0 or v == float("inf"):
            raise ValueError(f"pmem_emulation: {key} must be a finite number >= 0, got {value!r}")
        out[key] = v
    return out


def resident_bytes(pid="self") -> int:
    """The resident set size of process `pid` (this one by default) in bytes."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE


# The scalar fields of pool.stats() that are levels (what is held now), not
# counts since the pool was made: a rate or a difference over time means
# nothing for them.
STAT_LEVELS = frozenset({"allocated", "capacity", "headroom", "spare", "zero_ready", "fork_kept", "fork_children",
                         "handler_threads", "sample_rate", "rss", "outside_pool", "block_size",
                         "dirty_tracking", "nvme_direct", "pmem_dax"})


def stats_dict(s, rss: int) -> dict:
    """A tm_stats as pool.stats() gives it (without "last_error"), with the
    process's resident memory `rss`: what is outside the pool is the rest."""
    out = {}
    for tier in ("dram", "pmem", "nvme"):
        t = getattr(s, tier)
        out[tier] = {"capacity": t.capacity, "used": t.used, "peak": t.peak}
    for key in _STAT_COUNTERS:
        out[key] = int(getattr(s, key))
    out["rss"] = rss
    out["outside_pool"] = max(rss - out["dram"]["used"] - out["spare"] - out["zero_ready"], 0)
    return out


def allocation_dict(a) -> dict:
    """A tm_pub_array (a live allocation) as report() and the published
    snapshots give it: its offset in the arena, bytes, bytes per tier, origin."""
    return {"offset": int(a.offset), "bytes": int(a.bytes),
            **{name: int(a.tier_bytes[i]) for i, name in enumerate(TIERS)},
            "origin": ffi.string(a.origin).decode(errors="replace") or None}


def default_nvme_dir() -> pathlib.Path:
    """$TIEREDMEM_NVME_PATH, else a private directory in the user's cache."""
    env = os.environ.get("TIEREDMEM_NVME_PATH")
    if env:
        return pathlib.Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = pathlib.Path(cache) / "tieredmem"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


NVME_MARGIN = 0.10  # of the disk kept free when the NVMe size is not given


def default_nvme_size(path) -> int:
    """The NVMe tier's size when none is given: the free space of the disk
    that holds `path`, less NVME_MARGIN of it."""
    return int(shutil.disk_usage(path).free * (1 - NVME_MARGIN))


def _check_dir(path, name: str) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(errno.ENOENT, f"{name}: directory does not exist", p)
    if not os.path.isdir(p):
        raise NotADirectoryError(errno.ENOTDIR, f"{name}: not a directory", p)
    if not os.access(p, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"{name}: directory is not writable", p)
    st = os.stat(p)
    if st.st_uid != os.geteuid():
        raise PermissionError(errno.EPERM, f"{name}: directory is not owned by this user; tier files "
                                           "need a private directory", p)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(errno.EPERM, f"{name}: directory is writable by others (mode "
                                           f"{stat.S_IMODE(st.st_mode):o}); tier files need a private directory", p)
    return p


def _creation_error(err: int) -> Exception:
    msg = ffi.string(lib.tm_last_error(ffi.NULL, ffi.new("char[1024]"), 1024)).decode()
    if err in (errno.EPERM, errno.EACCES):
        return PermissionError(err, msg)
    if err == errno.EINVAL:
        return ValueError(msg)
    if err == errno.ENOMEM:
        return MemoryError(msg)
    return OSError(err, msg)


class Pool:
    """Memory over a DRAM tier with a hard budget and PMEM and NVMe tiers below.

    Arrays from empty/zeros/full/empty_like/asarray are ordinary numpy arrays;
    the engine moves their blocks between tiers as they are touched.

    close() (or leaving a `with` block) while arrays from the pool are alive
    defers the release: the pool stops allocating at once and is destroyed
    when its last array is freed. Arrays never dangle.

    publish: keep the pool's statistics where `tieredmem top`, `tieredmem
    stats` and tieredmem.metrics read them (default: yes, unless
    TIEREDMEM_PUBLISH=0). track_origin: record where the program made each
    allocation of at least the threshold (True) or of a size given, for
    report() and `top` (docs/observability.md).

    share: a host group's name, or a tieredmem.Share (its DRAM, this pool's
    floor, ceiling and weight): the pool's DRAM is then its share of the
    group's, moved between the group's processes every period to where it
    is measured to help most (docs/sharing.md); `dram` is not given then.
    Default: $TIEREDMEM_SHARE, else none.
    """

    def __init__(self, dram=None, pmem=0, nvme="16GiB", pmem_path=None, nvme_path=None,
                 block_size="64KiB", threshold="1MiB", policy=DEFAULT_POLICY, sampling=DEFAULT_SAMPLING,
                 pmem_emulation=None, publish=None, track_origin=False, share=None):
        from .sharing import member  # it reads published files, which import this module
        share = member.settings(share)
        if share is not None and dram is not None:
            raise ValueError(f"dram: a pool in a host group (share={share.name!r}) gets its DRAM from the group; "
                             "give its floor and ceiling instead (tieredmem.Share)")
        dram_b = parse_size("256MiB" if dram is None else dram, "dram")
        pmem_b = parse_size(pmem, "pmem")
        nvme_b = parse_size(nvme, "nvme")
        bs = parse_size(block_size, "block_size")
        if not (4096 <= bs <= 2 << 20) or bs & (bs - 1):
            raise ValueError(f"block_size: must be a power of two from 4KiB to 2MiB, got {block_size!r}")
        if dram_b < bs:
            raise ValueError(f"dram: must hold at least one block ({bs} bytes), got {dram!r}")
        self.threshold = self._parse_threshold(threshold)
        if isinstance(policy, str) and policy not in POLICIES:
            raise ValueError(f"policy: unknown policy {policy!r} (built-in: {', '.join(POLICIES)}, or a "
                             "tieredmem.Policy instance)")
        if isinstance(sampling, bool):
            sampling = DEFAULT_SAMPLING if sampling else 0.0
        if not isinstance(sampling, (int, float)) or not 0 <= sampling <= 0.5:
            raise ValueError(f"sampling: a share of the time from 0 to 0.5 (or True/False), got {sampling!r}")
        if pmem_emulation is None:
            pmem_emulation = os.environ.get("TIEREDMEM_PMEM_EMULATION") or None
        emu = parse_pmem_emulation(pmem_emulation) if pmem_emulation is not None else None
        if emu and not pmem_b:
            raise ValueError("pmem_emulation: the pool has no PMEM tier (pmem=0)")
        if publish is None:
            publish = os.environ.get("TIEREDMEM_PUBLISH", "") != "0"
        if not isinstance(publish, bool):
            raise TypeError(f"publish: expected True or False, got {publish!r}")
        origin_min = self._parse_origin_min(track_origin)
        self._keep = []  # C strings referenced by the config
        cfg = ffi.new("tm_config *")
        cfg.dram_bytes, cfg.pmem_bytes, cfg.nvme_bytes, cfg.block_size = dram_b, pmem_b, nvme_b, bs
        if pmem_b and pmem_path is not None:
            cfg.pmem_path = self._cstr(_check_dir(pmem_path, "pmem_path"))
        if nvme_b:
            path = default_nvme_dir() if nvme_path is None else nvme_path
            cfg.nvme_path = self._cstr(_check_dir(path, "nvme_path"))
        inject = os.environ.get("TIEREDMEM_INJECT")
        if inject:
            cfg.inject = self._cstr(inject)
        cfg.force_no_uffd = os.environ.get("TIEREDMEM_FORCE_NO_UFFD", "") not in ("", "0")
        cfg.sample_budget_ppm = round(sampling * 1e6)
        cfg.publish = publish
        if emu:
            cfg.pmem_read_ns, cfg.pmem_write_ns = round(emu["read_ns"]), round(emu["write_ns"])
            cfg.pmem_read_mbps, cfg.pmem_write_mbps = round(emu["read_gbps"] * 1000), round(emu["write_gbps"] * 1000)
        self.pmem_emulation = emu
        self._policy_layout = {}
        if not isinstance(policy, str):
            from .policy import base  # imports numba: only for numba policies
            if not isinstance(policy, base.Policy):
                raise TypeError(f"policy: expected a name ({', '.join(POLICIES)}) or a tieredmem.Policy, "
                                f"got {type(policy).__name__}")
        self._member = None
        if share is not None:
            # Made with room to grow to its ceiling; its grant is set once it runs.
            self._member = member.Member(share, bs)
            cfg.dram_bytes = self._member.join()
        p = lib.tm_pool_create(cfg)
        if p == ffi.NULL:
            if self._member is not None:
                self._member.leave()
            raise _creation_error(ffi.errno)
        self._p = p
        self.block_size = bs
        self._closed = False
        self._handlers = {}  # threshold -> tm_np_handler (never freed, see numpy_handler.c)
        self._on_close = []  # detach callbacks of other allocators over the engine (arrow_alloc)
        self._trace = None
        self._trace_len = 0  # events recorded when close() stopped the trace
        try:
            self.policy = self._bind_policy(policy)
            lib.tm_publish_policy(p, (policy if isinstance(policy, str) else type(policy).__name__).encode())
            if origin_min:
                self._track_origins(origin_min)
            if self._member is not None:
                self._member.attach(p, self._published_number(), self.published_path)
        except BaseException:
            self.close()
            raise

    def _published_number(self) -> int:
        """The pool's number in its published file's name, 0 if it publishes none."""
        path = self.published_path
        return int(path.rsplit("-", 1)[1]) if path else 0

    def _parse_origin_min(self, track_origin) -> int:
        """The size from which allocations' origins are recorded (0: none)."""
        if track_origin is False or track_origin is None:
            return 0
        if track_origin is True:
            return max(self.threshold, 1)
        n = parse_size(track_origin, "track_origin")
        if n == 0:
            raise ValueError("track_origin: a size of at least 1 byte, or True/False, got 0")
        return n

    def _track_origins(self, min_bytes: int) -> None:
        # Frames in the libraries are passed over: an origin is the program's line.
        for path in {sysconfig.get_paths()[k] for k in ("stdlib", "purelib", "platlib")} | {_PACKAGE_DIR}:
            if lib.tm_np_origin_skip(os.fsencode(os.path.join(path, ""))) < 0:
                raise MemoryError("cannot record the libraries' directories for track_origin")
        if lib.tm_track_origins(self._p, min_bytes) < 0:
            raise MemoryError("track_origin: cannot reserve room for the origins")

    def _bind_policy(self, policy):
        """Install the policy's hooks; returns the policy (its name if built in)."""
        if policy == "lru":  # the engine's CLOCK: no hooks
            return policy
        from .policy import base, builtin
        instance = builtin.BUILTIN[policy]() if isinstance(policy, str) else policy
        self._policy_layout = base.bind(instance, self._p)
        return policy

    @staticmethod
    def _parse_threshold(value) -> int:
        return parse_size(value, "threshold")

    def _cstr(self, s: str):
        c = ffi.new("char[]", os.fsencode(s))
        self._keep.append(c)
        return c

    # ---- lifetime: kept by the engine (tm_pool_close/pin/drop) ----------

    @property
    def _destroyed(self) -> bool:
        """True once the engine has been released."""
        return bool(lib.tm_pool_released(self._p))

    def _engine(self):
        """The engine handle; ValueError once it has been released."""
        if self._destroyed:
            raise ValueError("the pool is closed and released")
        return self._p

    def _open_engine(self):
        """The engine handle for what close() refuses; ValueError once closed."""
        if self._closed:
            raise ValueError("the pool is closed")
        return self._engine()

    def close(self, _lib=lib, _detach_malloc=malloc.detach):
        """Stop allocating; release the engine now or when the last array goes.

        While arrays keep a closed pool's engine alive, what only reads it
        stays allowed (stats, placement, owns, last_error, and stop_trace,
        which returns what was recorded up to close); what would change it or
        pin it longer raises ValueError: allocating, resize, advise,
        start_trace, metadata and policy_state."""
        if not self._closed:  # (_lib: still bound when called from __del__ at exit)
            self._closed = True
            for h in self._handlers.values():
                _lib.tm_np_detach(h)
            _lib.tm_np_detach_pool(self._p)
            for detach in self._on_close:
                detach()
            _detach_malloc(self._p)
            if self._trace is not None and not _lib.tm_pool_released(self._p):
                # The engine may outlive this object (arrays keep it): it must
                # not go on writing into a buffer that dies with it.
                self._trace_len = _lib.tm_trace_stop(self._p)
            _lib.tm_pool_close(self._p)
        if self._member is not None:
            # It keeps its DRAM until its last array goes; if that is gone,
            # its thread lets the engine go before this object can drop it.
            self._member.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        """`with pool:` makes it numpy's allocator in this context (arrays of at
        least pool.threshold bytes); leaving the block restores the previous
        allocator and closes the pool (arrays made inside stay valid). For a
        scope that leaves the pool open, use `with tm.use(pool):`."""
        numpy_alloc._enter(self, self._handler(self.threshold))
        return self

    def __exit__(self, *exc):
        numpy_alloc._exit(self)
        self.close()

    def __del__(self, _lib=lib, _detach_malloc=malloc.detach):
        if getattr(self, "_p", None) is not None:
            self.close(_lib, _detach_malloc)
            _lib.tm_pool_drop(self._p)
            self._p = None

    def _handler(self, threshold: int):
        engine = self._open_engine()
        h = self._handlers.get(threshold)
        if h is None:
            _init()
            h = lib.tm_np_handler_new(engine, threshold)
            if h == ffi.NULL:
                raise MemoryError("cannot create a numpy memory handler")
            self._handlers[threshold] = h
        return h

    # ---- allocation --------------------------------------------------

    def _make(self, fn, *args, **kwargs) -> np.ndarray:
        """Run a numpy constructor with every allocation it makes in the pool."""
        with use(self, threshold=0):
            try:
                return fn(*args, **kwargs)
            except MemoryError as e:
                raise MemoryError(f"tieredmem pool: {self.last_error()}") from e

    def empty(self, shape, dtype="float64", order="C") -> np.ndarray:
        """An uninitialised array in the pool (fresh pool memory reads as zero)."""
        return self._make(np.empty, shape, dtype=dtype, order=order)

    def zeros(self, shape, dtype="float64", order="C") -> np.ndarray:
        """Zeros without writing them: the engine maps fresh blocks zero-filled."""
        return self._make(np.zeros, shape, dtype=dtype, order=order)

    def full(self, shape, fill_value, dtype=None, order="C") -> np.ndarray:
        return self._make(np.full, shape, fill_value, dtype=dtype, order=order)

    def empty_like(self, prototype, dtype=None, shape=None) -> np.ndarray:
        return self._make(np.empty_like, prototype, dtype=dtype, shape=shape)

    def asarray(self, a, dtype=None) -> np.ndarray:
        """`a` as an array in this pool: itself if it already is one, else a copy."""
        if isinstance(a, np.ndarray) and (dtype is None or a.dtype == np.dtype(dtype)) and self.owns(a):
            return a
        return self._make(np.array, a, dtype=dtype, copy=True)

    # ---- run-time controls --------------------------------------------

    def resize(self, dram) -> None:
        """Change the DRAM budget while running; shrinking demotes at once."""
        if self._member is not None:
            raise ValueError(f"resize: this pool's DRAM is set by its host group {self._member.s.name!r} "
                             "(docs/sharing.md)")
        nbytes = parse_size(dram, "dram")
        r = lib.tm_pool_resize(self._open_engine(), nbytes)
        if r == -errno.ENOSPC:
            raise MemoryError(self.last_error())
        if r < 0:
            raise ValueError(self.last_error())

    def advise(self, a: np.ndarray, advice: str) -> None:
        """Advice on the memory of array (or view) `a`, the madvise of tiering:
        "willneed" brings it into DRAM now (as much as the budget allows);
        "dontneed" moves it out of DRAM now, keeping its data; "cold" makes it
        the first to be demoted, "hot" the last (and brings it in now);
        "sequential" reads far ahead of faults in it, "random" not at all;
        "normal" forgets earlier advice."""
        if not isinstance(a, np.ndarray):
            raise TypeError(f"advise() takes a numpy array, got {type(a).__name__}")
        code = ADVICE.get(advice) if isinstance(advice, str) else None
        if code is None:
            raise ValueError(f"advise(): unknown advice {advice!r} (one of: {', '.join(ADVICE)})")
        lo, n = self._span(a)
        engine = self._open_engine()
        if n and not lib.tm_contains(engine, ffi.cast("void *", lo), n):
            raise ValueError("advise(): the array's memory is not in this pool")
        if lib.tm_advise(engine, ffi.cast("void *", lo), n, code) < 0:
            raise OSError(self.last_error())

    def start_trace(self, max_events: int = 10_000_000) -> None:
        """Record the block id of every access the engine sees (faults and
        sampled hints) from now on, up to max_events (then counted as
        stats()["trace_dropped"])."""
        engine = self._open_engine()
        if self._trace is not None:
            raise RuntimeError("a trace is already being recorded; call stop_trace() first")
        if not isinstance(max_events, int) or max_events < 1:
            raise ValueError(f"max_events: a positive integer, got {max_events!r}")
        # Anonymous memory outside every pool, backed only as the trace grows.
        buf = mmap.mmap(-1, max_events * 8)
        lib.tm_trace_start(engine, ffi.cast("int64_t *", ffi.from_buffer(buf)), max_events)
        self._trace = buf

    def stop_trace(self, path=None) -> np.ndarray:
        """Stop recording; the trace as a 1-D int64 array of block ids in
        access order, also saved with numpy.save to `path` if given. After
        close(), the trace up to the close."""
        if self._trace is None:
            raise RuntimeError("no trace is being recorded; call start_trace() first")
        n = self._trace_len if self._closed else lib.tm_trace_stop(self._engine())
        trace = np.frombuffer(self._trace, dtype=np.int64, count=n).copy()
        self._trace.close()
        self._trace = None
        if path is not None:
            np.save(path, trace)
        return trace

    def policy_state(self) -> dict:
        """The policy's state arrays as numpy views of the engine's copies
        (writable; the engine's threads update them concurrently), with the
        info array as "info". Empty for "lru". The views keep the pool from
        being released while they live."""
        engine = self._open_engine()
        lib.tm_pool_pin(engine)
        token = _Token()
        weakref.finalize(token, lib.tm_pool_unpin, engine)
        return {name: np.asarray(_Exported(addr, shape, typestr, token, writable=True))
                for name, (addr, shape, typestr) in self._policy_layout.items()}

    # ---- inspection --------------------------------------------------

    def _span(self, a: np.ndarray):
        lo, hi = np.lib.array_utils.byte_bounds(a)
        return lo, hi - lo

    def owns(self, a: np.ndarray) -> bool:
        lo, n = self._span(a)
        return n > 0 and bool(lib.tm_contains(self._engine(), ffi.cast("void *", lo), n))

    def placement(self, a: np.ndarray) -> dict:
        """Bytes of `a` per tier; "unbacked" is memory never written. Sums to
        a.nbytes (for a strided view, only the bytes of its elements count)."""
        if not isinstance(a, np.ndarray):
            raise TypeError(f"placement() takes a numpy array, got {type(a).__name__}")
        engine = self._engine()
        lo, n = self._span(a)
        if n and not lib.tm_contains(engine, ffi.cast("void *", lo), n):
            raise ValueError("placement(): the array's memory is not in this pool")
        if n == a.nbytes:  # contiguous: the engine counts the span under its lock
            out = ffi.new("uint64_t[4]")
            lib.tm_placement(engine, ffi.cast("void *", lo), n, out)
            return {name: int(out[i]) for i, name in enumerate(TIERS)}
        return self._strided_placement(a)

    def _strided_placement(self, a: np.ndarray) -> dict:
        """Per-element placement of a strided view, from the metadata views
        (a snapshot: blocks may move while it is taken). Elements are counted
        in the block of their first byte."""
        engine = self._engine()  # alive: `a` is one of its allocations
        base = int(ffi.cast("uintptr_t", lib.tm_arena_base(engine)))
        m = lib.tm_get_meta(engine)
        tiers = np.frombuffer(ffi.buffer(m.tier, m.nblocks), dtype=np.uint8)
        shift = self.block_size.bit_length() - 1
        counts = np.zeros(len(TIERS), dtype=np.int64)
        # Element addresses, built a slice of the first axis at a time.
        parts = a if a.ndim > 1 else (a[i:i + (1 << 20)] for i in range(0, a.shape[0], 1 << 20))
        for sub in parts:
            offsets = np.zeros(1, dtype=np.int64)
            for size, stride in zip(sub.shape, sub.strides):
                offsets = (offsets[:, None] + np.arange(size, dtype=np.int64) * stride).ravel()
            start = sub.__array_interface__["data"][0] - base
            blocks = (start + offsets) >> shift
            counts += np.bincount(tiers[blocks], minlength=len(TIERS)) * a.itemsize
        return {name: int(counts[i]) for i, name in enumerate(TIERS)}

    def stats(self) -> dict:
        """Capacity and use per tier, the engine's counters, and the process's
        resident memory ("rss") and how much of it is outside this pool
        ("outside_pool": RSS less the pool's DRAM tier and its spares, i.e. what
        is left to tier). "spare" is freed pool memory kept mapped for the next
        allocation at its address, "zero_ready" huge pages populated for the
        next fresh ones (DRAM held, within the budget; given back when room is
        needed or after a second unused).
        "locked_io_bytes" counts the bytes of tier I/O and of copies into the
        arena done with the pool lock held, which keeps other faults waiting:
        0 is the aim (docs/architecture.md, "Threads and locking")."""
        s = ffi.new("tm_stats *")
        lib.tm_get_stats(self._engine(), s)
        out = stats_dict(s, resident_bytes())
        out["block_size"] = self.block_size
        out["last_error"] = self.last_error()
        share = self._member.status() if self._member is not None else None
        if share is not None:
            out["share"] = share
        return out

    @property
    def published_path(self):
        """The file this pool publishes its statistics in, or None."""
        path = lib.tm_publish_path(self._p)
        return None if path == ffi.NULL else os.fsdecode(ffi.string(path))

    def report(self) -> list:
        """The pool's live allocations, largest first, as dicts: the numpy
        array that owns each ("shape", "dtype"; None for memory that is no
        array's, as the C library's under `run` or pyarrow's buffers), its
        "bytes" (whole blocks) and their bytes per tier, and "origin", the
        file:line where the program made it (with Pool(track_origin=...)).

        The arrays are found among the objects the garbage collector knows
        and the frames of every thread: this takes a while in a program with
        millions of objects, and an array referenced only from C is missed."""
        engine = self._engine()
        count = lib.tm_live_allocations(engine)
        found = ffi.new("tm_pub_array[]", max(count, 1))
        n = lib.tm_allocations(engine, found, count)
        base = int(ffi.cast("uintptr_t", lib.tm_arena_base(engine)))
        rows = [allocation_dict(found[i]) for i in range(n)]
        arrays = owners.owners(base + row["offset"] for row in rows)
        for row in rows:
            a = arrays.get(base + row["offset"])
            row["shape"] = None if a is None else a.shape
            row["dtype"] = None if a is None else str(a.dtype)
        return rows

    def last_error(self) -> str:
        return ffi.string(lib.tm_last_error(self._engine(), ffi.new("char[1024]"), 1024)).decode()

    def metadata(self) -> dict:
        """Per-block metadata as read-only numpy views (no copy), one entry per
        arena block: tier, flags, access_count, last_access, slot. The views
        keep the pool from being released while they live."""
        engine = self._open_engine()
        lib.tm_pool_pin(engine)
        token = _Token()
        weakref.finalize(token, lib.tm_pool_unpin, engine)
        m = lib.tm_get_meta(engine)
        views = {}
        for name, dt in (("tier", "u1"), ("flags", "u1"), ("access_count", "u1"),
                         ("last_access", "<u2"), ("slot", "<u4")):
            addr = int(ffi.cast("uintptr_t", getattr(m, name)))
            views[name] = np.asarray(_Exported(addr, m.nblocks, dt, token))
        return views

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<tieredmem.Pool {state} block_size={self.block_size}>"


class _Token:
    """Pins a pool while metadata views exist (finalized with the last one)."""


class _Exported:
    """Engine memory handed to numpy; the array's base keeps the pin."""

    def __init__(self, addr: int, shape, typestr: str, token: _Token, writable=False):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.__array_interface__ = {"data": (addr, not writable), "shape": shape, "typestr": typestr, "version": 3}
        self.token = token
