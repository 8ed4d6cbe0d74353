"""C unit tests of engine parts that need no userfaultfd.

Each tests/c/test_*.c is a list of checks, one behaviour each, named for it
(its CHECK_ENTRY table); it is compiled once with the system C compiler
against only the csrc/ files it needs (not the built extension), with
AddressSanitizer and UndefinedBehaviorSanitizer, into pytest's tmp dir, and
each check is a pytest test that runs the binary with the check's name. The
binary prints "ok NAME" or "FAIL NAME" with the failed conditions above it,
and exits non-zero on a failure; that output is the assertion message.

  test_extent.c    csrc/extent.c: first fit, -1 when no run is long enough,
                   coalescing on free, a randomized run against a bitmap
                   model with the free list's invariants after every step.
  test_slots.c     csrc/tier.c (+ os.c for tm_os_now_ns): next-fit slot maps
                   (hint, cursor, wrap, word boundaries, full map, used and
                   peak, a randomized next-fit model), slots kept for forked
                   children, and tm_inject_parse.
  test_block.c     csrc/block.h (+ os.c for tm_assert's report): each path of
                   the block state diagram, and a transition from a state it
                   does not start from aborting.
  test_checksum.c  csrc/checksum.c: CRC-32C vectors and a bitwise reference,
                   block checksums (quarters, other lengths, bit flips).
  test_ghost.c     csrc/ghost.c (+ os.c): histogram buckets, refault
                   distances from the eviction clock (and its wrap), park-to-
                   hint times, the census of parked blocks.

Without a C compiler the tests are skipped. With a compiler that lacks the
sanitizers (or whose sanitized programs cannot run here) they run without
them, and a check that passes is reported as skipped with that reason, not
as passed.
"""
import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CDIR = ROOT / "tests" / "c"

# C test -> (the csrc/ files it links, extra link flags)
C_TESTS = {
    "test_extent": (["extent.c"], []),
    "test_slots": (["tier.c", "os.c"], []),
    "test_checksum": (["checksum.c"], ["-pthread"]),
    "test_block": (["os.c"], []),
    "test_ghost": (["ghost.c", "os.c"], ["-pthread"]),
}

CFLAGS = ["-O1", "-g", "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{CSRC}", f"-I{CDIR}"]
# -fno-sanitize-recover: a UBSan finding ends the run with an error instead
# of printing and exiting 0.
SANITIZERS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
RUN_ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}


def checks_of(test):
    """The check names of a C test, in order, from its CHECK_ENTRY table."""
    return re.findall(r"CHECK_ENTRY\((\w+)\)", (CDIR / f"{test}.c").read_text())


PARAMS = [pytest.param(t, c, id=f"{t}::{c}") for t in C_TESTS for c in checks_of(t)]


@pytest.fixture(scope="module")
def toolchain(tmp_path_factory):
    """(cc, None) or (cc, why the sanitizers cannot be used); skips without cc."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler (cc, gcc or clang) on PATH")
    d = tmp_path_factory.mktemp("sanitizer-probe")
    (d / "probe.c").write_text("#include <stdlib.h>\nint main(void) { free(malloc(1)); return 0; }\n")
    r = subprocess.run([cc, *SANITIZERS, "-o", str(d / "probe"), str(d / "probe.c")], capture_output=True, text=True)
    if r.returncode != 0:
        return cc, f"{cc} cannot build with {' '.join(SANITIZERS)}: {r.stderr.strip()[-400:]}"
    r = subprocess.run([str(d / "probe")], capture_output=True, text=True, env=RUN_ENV)
    if r.returncode != 0:
        return cc, f"a sanitized program does not run here (exit {r.returncode}): {r.stderr.strip()[-400:]}"
    return cc, None


@pytest.fixture(scope="module")
def binaries(toolchain, tmp_path_factory):
    """Compile each C test on first use: test -> (path, None) or (None, compiler output)."""
    cc, no_sanitizers = toolchain
    built = {}
    outdir = tmp_path_factory.mktemp("c-units")

    def get(test):
        if test not in built:
            sources, libs = C_TESTS[test]
            exe = outdir / test
            cmd = [cc, *CFLAGS, *([] if no_sanitizers else SANITIZERS), "-o", str(exe),
                   str(CDIR / f"{test}.c"), *(str(CSRC / s) for s in sources), *libs]
            r = subprocess.run(cmd, capture_output=True, text=True)
            built[test] = (exe, None) if r.returncode == 0 else (None, f"{' '.join(cmd)}\n{r.stdout}{r.stderr}")
        return built[test]

    return get


@pytest.mark.parametrize("test, check", PARAMS)
def test_c_check(test, check, toolchain, binaries):
    """One check (one behaviour, named by the check) of tests/c/<test>.c."""
    exe, compile_error = binaries(test)
    assert exe is not None, f"{test}.c does not compile:\n{compile_error}"
    r = subprocess.run([str(exe), check], capture_output=True, text=True, timeout=120, env=RUN_ENV)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"{test} {check} exited {r.returncode}:\n{out}"
    assert f"ok   {check}\n" in r.stdout, f"{test} {check} did not report ok:\n{out}"
    if toolchain[1]:
        pytest.skip(f"passed, but without sanitizers: {toolchain[1]}")
