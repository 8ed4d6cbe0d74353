"""Helpers shared by the regression tests that probe the engine in a child
process (test_odirect_race.py, test_damaged_clean_block.py,
test_policy_progress.py).

Whatever could hang or crash runs in a child: run_child() never raises on a
timeout, so a hang is an ordinary assertion failure with the child's output,
and a child killed by a signal is reported by the signal's name. Children
print one line "RESULT {json}" with what the parent asserts on."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

TESTS = str(pathlib.Path(__file__).resolve().parent)
RESULT = "RESULT "


class Child:
    """What a child did: returncode (None if it timed out and was killed),
    stdout, stderr, elapsed seconds, timed_out, and its RESULT (or None)."""

    def __init__(self, args, returncode, stdout, stderr, elapsed, timed_out, timeout):
        self.args, self.returncode, self.stdout, self.stderr = args, returncode, stdout, stderr
        self.elapsed, self.timed_out, self.timeout = elapsed, timed_out, timeout
        self.result = None
        for line in stdout.splitlines():
            if line.startswith(RESULT):
                self.result = json.loads(line[len(RESULT):])

    def hung(self):
        """Killed by the run_child timeout, or by the child's watchdog
        (watchdog(): "STILL BLOCKED", or faulthandler's GIL-free backstop)."""
        return self.timed_out or "STILL BLOCKED" in self.stdout or "Timeout (" in self.stderr

    def how(self):
        """How the child ended, for assertion messages."""
        if self.timed_out:
            return f"HUNG: killed after its {self.timeout:.0f} s timeout"
        if self.returncode is not None and self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = str(-self.returncode)
            return f"killed by {name} after {self.elapsed:.1f} s"
        return f"exited {self.returncode} after {self.elapsed:.1f} s"

    def __str__(self):
        return (f"child {self.args[3:]}: {self.how()}\n--- stdout (tail) ---\n{self.stdout[-3000:]}"
                f"\n--- stderr (tail) ---\n{self.stderr[-3000:]}")


def _text(s):
    if s is None:
        return ""
    return s.decode(errors="replace") if isinstance(s, bytes) else s


def run_child(script, *args, timeout, env=None):
    """Run `python -c script args...` with tests/ on sys.path; never raises
    on a timeout (the child is killed and the Child says so)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = TESTS + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.setdefault("PYTHONFAULTHANDLER", "1")
    if env:
        full_env.update(env)
    argv = [sys.executable, "-c", script, *map(str, args)]
    t0 = time.monotonic()
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env)
        return Child(argv, res.returncode, res.stdout, res.stderr, time.monotonic() - t0, False, timeout)
    except subprocess.TimeoutExpired as e:
        return Child(argv, None, _text(e.stdout), _text(e.stderr), time.monotonic() - t0, True, timeout)


def emit(obj):
    """In a child: print the RESULT line the parent parses."""
    print(RESULT + json.dumps(obj), flush=True)


def watchdog(seconds, pool, what):
    """In a child: if the process is still running after `seconds`, print
    what it was blocked in (and the pool's counters, unless taking them
    blocks too) and exit with status 4: a hang becomes a prompt, described
    failure instead of a timeout."""
    import faulthandler
    import threading

    # A GIL-free backstop (a C thread): an operation that holds the GIL while
    # it faults (ndarray.resize's realloc) keeps the Python watchdog from running.
    faulthandler.dump_traceback_later(seconds + 3, exit=True)

    def bark():
        time.sleep(seconds)
        print(f"STILL BLOCKED after {seconds} s in: {what}", flush=True)
        got = []
        t = threading.Thread(target=lambda: got.append(stats_summary(pool)), daemon=True)
        t.start()
        t.join(2)
        print("WATCHDOG " + (json.dumps(got[0]) if got else "pool.stats() blocked too"), flush=True)
        os._exit(4)

    threading.Thread(target=bark, daemon=True).start()


def tier_file_fd(directory):
    """In a child: the descriptor of this process's unlinked tier file in
    `directory` (reached through /proc/self/fd)."""
    directory = str(directory)
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(directory):
                return int(fd)
        except OSError:
            continue
    raise AssertionError(f"no open file in {directory}")


def private_dir(path):
    """A directory a pool accepts as a tier directory (owned, mode 0700)."""
    path = pathlib.Path(path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


STAT_KEYS = ("faults", "promotions", "demotions", "clean_drops", "bytes_read", "bytes_written",
             "io_errors", "checksum_errors", "sigbus_sent", "policy_errors", "budget_overruns",
             "readahead", "prefetched", "background_demotions", "policy_promotions", "minor_faults",
             "wp_faults", "hint_faults")


def stats_summary(pool):
    """In a child: the counters the tests assert on, plus last_error."""
    s = pool.stats()
    out = {k: s[k] for k in STAT_KEYS if k in s}
    out["last_error"] = s["last_error"]
    out["dram_peak"] = s["dram"]["peak"]
    return out


# ---- an adversarial numba policy (test_policy_progress.py) ------------------

_ADVERSARIAL = None


def adversarial_policy(mode):
    """A valid but worst-case tm.Policy: select_victims names the DRAM blocks
    most recently faulted, newest first; mode "recent" names only those (up
    to the last 8 faults), mode "all" follows them with every other DRAM
    block. Every answer passes the engine's validation (in DRAM, not busy,
    no duplicates, within `want`), so the engine has to make progress
    despite it."""
    global _ADVERSARIAL
    import numpy as np
    if _ADVERSARIAL is None:
        from numba import carray, cfunc

        import tieredmem as tm
        from tieredmem.policy import ON_ACCESS, SELECT_VICTIMS
        from tieredmem.policy.base import AHEAD, DRAM, F_BUSY, INFO_ARENA_BLOCKS, INFO_LEN

        RING = 8

        @cfunc(ON_ACCESS, cache=True)
        def adv_on_access(state, block, kind, now):
            if kind == AHEAD:
                return
            g = carray(state[1], RING + 2, np.int64)  # g[0]: next slot, g[1]: mode, g[2:]: latest faults
            g[2 + g[0] % RING] = block
            g[0] += 1

        @cfunc(SELECT_VICTIMS, cache=True)
        def adv_select_victims(state, tier, flags, nblocks, want, out, out_tier):
            info = carray(state[0], INFO_LEN, np.int64)
            g = carray(state[1], RING + 2, np.int64)
            seen = carray(state[2], info[INFO_ARENA_BLOCKS], np.uint8)
            got = 0
            k = 0
            while k < RING and k < g[0] and got < want:  # newest fault first
                b = g[2 + (g[0] - 1 - k) % RING]
                k += 1
                if 0 <= b < nblocks and tier[b] == DRAM and not (flags[b] & F_BUSY) and seen[b] == 0:
                    seen[b] = 1
                    out[got] = b
                    got += 1
            if g[1] == 1:  # "all": then every other DRAM block
                b = 0
                while b < nblocks and got < want:
                    if tier[b] == DRAM and not (flags[b] & F_BUSY) and seen[b] == 0:
                        seen[b] = 1
                        out[got] = b
                        got += 1
                    b += 1
            for i in range(got):
                seen[out[i]] = 0
                out_tier[i] = 0
            return got

        class AdversarialPolicy(tm.Policy):
            on_access = adv_on_access
            select_victims = adv_select_victims

            def __init__(self, mode):
                self.mode = mode
                self.name = f"adversarial-{mode}"

            def state(self, arena_blocks, dram_blocks):
                g = np.zeros(RING + 2, np.int64)
                g[1] = 1 if self.mode == "all" else 0
                g[2:] = -1
                return {"g": g, "seen": np.zeros(arena_blocks, np.uint8)}

        _ADVERSARIAL = AdversarialPolicy
    return _ADVERSARIAL(mode)


def make_policy(name):
    """In a child: a built-in policy's name, or "adversarial-recent" /
    "adversarial-all" (adversarial_policy)."""
    if name.startswith("adversarial-"):
        return adversarial_policy(name.split("-", 1)[1])
    return name
