"""Placement policies the engine runs: numba @cfunc hooks on its own threads.

A policy is a set of up to four C functions, compiled by numba in nopython
mode, that the engine calls with its lock held and without the GIL
(tm_policy_ops in csrc/tieredmem.h):

    on_access(state, block, kind, now)            every fault and sampled hint,
                                                  and blocks entering DRAM ahead
    select_victims(state, tier, flags, nblocks, want, out, out_tier) -> n
    promote(state, tier, flags, nblocks, max, out) -> n     (periodically)
    prefetch(state, tier, flags, nblocks, block, max, out) -> n   (on a fault)

Their numba signatures are ON_ACCESS, SELECT_VICTIMS, PROMOTE and PREFETCH
below. `state` is a table of pointers: state[0] is the pool's info array
(int64, TM_INFO_* of tieredmem.h: arena blocks, DRAM budget in blocks,
resident blocks, scan end, block size, accesses so far), state[1:] the
policy's own arrays in the order its state() returns them; a hook views them
with numba.carray(state[k], shape, dtype). tier[] and flags[] are the
engine's per-block metadata (read-only), nblocks entries.

Hooks must never raise (an exception in a cfunc takes the GIL, which a
thread waiting for this fault may hold: a deadlock), never block and never
touch pool memory. Answers are validated: a wrong one is ignored, counted in
stats()["policy_errors"], and the built-in CLOCK decides instead.
"""
import numpy as np
from numba import types

from .._engine import ffi, lib

_STATE = types.CPointer(types.voidptr)
_U8P = types.CPointer(types.uint8)
_I64P = types.CPointer(types.int64)
ON_ACCESS = types.void(_STATE, types.int64, types.int32, types.int64)
SELECT_VICTIMS = types.int64(_STATE, _U8P, _U8P, types.int64, types.int64, _I64P, _U8P)
PROMOTE = types.int64(_STATE, _U8P, _U8P, types.int64, types.int64, _I64P)
PREFETCH = types.int64(_STATE, _U8P, _U8P, types.int64, types.int64, types.int64, _I64P)
SIGNATURES = {"on_access": ON_ACCESS, "select_victims": SELECT_VICTIMS, "promote": PROMOTE, "prefetch": PREFETCH}

# enum tm_access_kind, tm_tier_id, per-block flags and TM_INFO_*, from
# tieredmem.h through cffi (plain ints: numba compiles them in as constants).
MISSING, MINOR, WP, HINT, AHEAD = (lib.TM_ACCESS_MISSING, lib.TM_ACCESS_MINOR, lib.TM_ACCESS_WP, lib.TM_ACCESS_HINT,
                                   lib.TM_ACCESS_AHEAD)
UNBACKED, DRAM, PMEM, NVME = lib.TM_UNBACKED, lib.TM_DRAM, lib.TM_PMEM, lib.TM_NVME
F_ALLOC, F_DIRTY, F_REF, F_BUSY, F_POISON, F_SAMPLED, F_HOT, F_COLD = (
    lib.TM_F_ALLOC, lib.TM_F_DIRTY, lib.TM_F_REF, lib.TM_F_BUSY, lib.TM_F_POISON, lib.TM_F_SAMPLED, lib.TM_F_HOT,
    lib.TM_F_COLD)
INFO_ARENA_BLOCKS, INFO_DRAM_BLOCKS, INFO_RESIDENT, INFO_SCAN_END, INFO_BLOCK_SIZE, INFO_NOW = (
    lib.TM_INFO_ARENA_BLOCKS, lib.TM_INFO_DRAM_BLOCKS, lib.TM_INFO_RESIDENT, lib.TM_INFO_SCAN_END,
    lib.TM_INFO_BLOCK_SIZE, lib.TM_INFO_NOW)
INFO_LEN = lib.TM_INFO_LEN

# Compiled hooks are kept for the life of the process: an engine keeps
# calling them as long as it lives, which can outlast every Python reference.
_kept = []


class Policy:
    """Base class of placement policies. A subclass sets any of on_access,
    select_victims, promote and prefetch to a numba cfunc compiled with the
    matching signature of this module, and returns its state arrays from
    state(). The hooks it leaves as None keep the engine's built-ins."""

    name = "custom"
    on_access = None
    select_victims = None
    promote = None
    prefetch = None

    def state(self, arena_blocks: int, dram_blocks: int) -> dict:
        """The policy's arrays, by name, with their initial contents. The
        engine gets copies of them (in memory it owns, outside every pool);
        pool.policy_state returns numpy views of those copies."""
        return {}

    def __repr__(self):
        return f"<tieredmem policy {self.name!r}>"


def _hooks(policy):
    hooks = {}
    for name, sig in SIGNATURES.items():
        fn = getattr(policy, name)
        if fn is None:
            continue
        if not hasattr(fn, "address") or getattr(fn, "_sig", None) != sig:
            got = getattr(fn, "_sig", type(fn).__name__)
            raise TypeError(f"policy {policy.name!r}: {name} must be a numba cfunc with signature {sig}, got {got}")
        hooks[name] = fn
    return hooks


def bind(policy, engine) -> dict:
    """Install `policy` on the engine. Returns where its state arrays live:
    {name: (address, shape, typestr)}, the info array first as "info"."""
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a name or a tieredmem.Policy, got {type(policy).__name__}")
    hooks = _hooks(policy)
    s = ffi.new("tm_stats *")
    lib.tm_get_stats(engine, s)
    arena_blocks = int(lib.tm_get_meta(engine).nblocks)
    dram_blocks = int(s.dram.capacity // lib.tm_block_size(engine))
    arrays = {"info": np.zeros(INFO_LEN, dtype=np.int64)}
    for name, a in policy.state(arena_blocks, dram_blocks).items():
        if name == "info":
            raise ValueError(f"policy {policy.name!r}: the state name 'info' is reserved")
        arrays[name] = np.ascontiguousarray(a)
    table = ffi.cast("void **", lib.tm_policy_alloc(engine, ffi.sizeof("void *") * len(arrays)))
    if table == ffi.NULL:
        raise MemoryError("cannot allocate the policy's state")
    layout = {}
    for k, (name, a) in enumerate(arrays.items()):
        mem = lib.tm_policy_alloc(engine, a.nbytes)
        if mem == ffi.NULL:
            raise MemoryError(f"cannot allocate the policy's state array {name!r} ({a.nbytes} bytes)")
        table[k] = mem
        ffi.memmove(mem, a, a.nbytes)
        layout[name] = (int(ffi.cast("uintptr_t", mem)), a.shape, a.dtype.str)
    ops = ffi.new("tm_policy_ops *")
    ops.state = table
    ops.info = ffi.cast("int64_t *", table[0])
    for name, fn in hooks.items():
        setattr(ops, name, ffi.cast(ffi.typeof(getattr(ops, name)), fn.address))
    _kept.append(list(hooks.values()))
    lib.tm_set_policy(engine, ops)
    return layout
