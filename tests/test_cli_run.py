"""`python -m tieredmem run` (tieredmem/commands/run.py) as a user sees it:
like `python -m cProfile`, it runs a script or a module as __main__ in this
interpreter with a pool installed process-wide, and the program's argv,
__main__, exit code and traceback are as if it ran directly. Settings come
from options or TIEREDMEM_* variables (options win); a summary goes to stderr
at exit unless --quiet, and --stats FILE writes JSON. Bad input to `run`
exits 2 with a usage message.

Every run is a subprocess in tmp_path, with the NVMe tier in a tmp directory,
a small DRAM/NVMe size, no inherited TIEREDMEM_* variables and XDG_CACHE_HOME
in tmp_path, so nothing touches the user's cache.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60, method="thread")

MiB = 1 << 20
SMALL_POOL = ("--dram", "64MiB", "--nvme", "1GiB")
RUN_TIMEOUT = 50  # seconds per subprocess


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def clean_env(tmp_path, extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDMEM_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env.update(extra or {})
    return env


def python(tmp_path, *args, env=None):
    """The program run directly by python, for comparison."""
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=clean_env(tmp_path, env),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def tmrun(tmp_path, *args, env=None, sizes=SMALL_POOL):
    """`python -m tieredmem run --nvme-path <tmp> <sizes> args...` in tmp_path."""
    nvme = tmp_path / "nvme"
    nvme.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "tieredmem", "run", "--nvme-path", str(nvme), *sizes, *args]
    return subprocess.run(cmd, cwd=tmp_path, env=clean_env(tmp_path, env),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def last_json_line(out):
    return json.loads(out.strip().splitlines()[-1])


# A program that reports, as JSON on its last stdout line, where its arrays live.
PLACEMENT_PROGRAM = """
    import concurrent.futures, json
    import numpy as np
    import tieredmem as tm
    from numpy._core.multiarray import get_handler_name

    pool = tm.installed()
    big = np.ones(2 * 2**20 // 8)       # 2 MiB
    small = np.ones(1000)               # 8000 bytes
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        worker = ex.submit(np.ones, 2 * 2**20 // 8).result()
    print(json.dumps({
        "installed": pool is not None,
        "big_handler": get_handler_name(big), "big_in_pool": pool.owns(big),
        "small_in_pool": pool.owns(small),
        "worker_handler": get_handler_name(worker), "worker_in_pool": pool.owns(worker),
    }))
"""


# ---- the program runs as if directly -----------------------------------

def test_the_script_gets_its_own_argv(tmp_path):
    write(tmp_path / "prog.py", "import sys, json; print(json.dumps(sys.argv))")
    r = tmrun(tmp_path, "prog.py", "a", "--b", "c d")
    assert r.returncode == 0, r.stderr
    assert last_json_line(r.stdout) == ["prog.py", "a", "--b", "c d"]


def test_the_script_runs_as___main__(tmp_path):
    write(tmp_path / "prog.py", """
        import __main__, json, os
        print(json.dumps([__name__, os.path.basename(__main__.__file__)]))
        if __name__ == "__main__":
            print("MAIN BLOCK RAN")
    """)
    r = tmrun(tmp_path, "prog.py")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ['["__main__", "prog.py"]', "MAIN BLOCK RAN"]


def test_the_scripts_directory_is_first_on_sys_path(tmp_path):
    write(tmp_path / "app" / "helper.py", "VALUE = 'from helper'")
    write(tmp_path / "app" / "prog.py", "import helper; print(helper.VALUE)")
    r = tmrun(tmp_path, "app/prog.py")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "from helper"


def test_the_programs_own_options_even_help_are_passed_to_it(tmp_path):
    write(tmp_path / "prog.py", "import sys, json; print(json.dumps(sys.argv[1:]))")
    r = tmrun(tmp_path, "prog.py", "--help", "--dram", "1GiB", "--quiet", "-m", "x")
    assert r.returncode == 0, r.stderr
    assert last_json_line(r.stdout) == ["--help", "--dram", "1GiB", "--quiet", "-m", "x"]
    assert "usage:" not in r.stdout + r.stderr
    assert "tieredmem:" in r.stderr  # --quiet was the program's, not run's


def test_dash_m_runs_a_module_as___main__with_its_argv(tmp_path):
    write(tmp_path / "lib" / "mymod.py", """
        import json, os, sys
        print(json.dumps([__name__, os.path.basename(sys.argv[0]), sys.argv[1:]]))
    """)
    r = tmrun(tmp_path, "-m", "mymod", "x", "--help", env={"PYTHONPATH": str(tmp_path / "lib")})
    assert r.returncode == 0, r.stderr
    assert last_json_line(r.stdout) == ["__main__", "mymod.py", ["x", "--help"]]


# ---- arrays of the program -----------------------------------------------

@pytest.fixture(scope="module")
def placement(tmp_path_factory):
    """What PLACEMENT_PROGRAM reports under `run` (one run for the tests below)."""
    tmp_path = tmp_path_factory.mktemp("placement")
    write(tmp_path / "prog.py", PLACEMENT_PROGRAM)
    r = tmrun(tmp_path, "prog.py")
    assert r.returncode == 0, r.stderr
    return last_json_line(r.stdout)


def test_the_program_sees_the_installed_pool(placement):
    assert placement["installed"]


def test_arrays_of_at_least_the_threshold_in_the_program_live_in_the_pool(placement):
    assert (placement["big_handler"], placement["big_in_pool"]) == ("tieredmem", True)


def test_arrays_below_the_threshold_in_the_program_are_not_in_the_pool(placement):
    assert placement["small_in_pool"] is False


def test_an_array_made_in_a_thread_pool_executor_worker_lives_in_the_pool(placement):
    assert (placement["worker_handler"], placement["worker_in_pool"]) == ("tieredmem", True)


def test_the_threshold_option_raises_the_size_that_goes_to_the_pool(tmp_path):
    write(tmp_path / "prog.py", PLACEMENT_PROGRAM)
    r = tmrun(tmp_path, "--threshold", "4MiB", "prog.py")
    assert r.returncode == 0, r.stderr
    assert last_json_line(r.stdout)["big_in_pool"] is False


# ---- exit codes and exceptions -------------------------------------------

@pytest.mark.parametrize("body, code", [
    ("x = 1", 0),
    ("import sys; sys.exit()", 0),
    ("import sys; sys.exit(0)", 0),
    ("import sys; sys.exit(3)", 3),
    ("import sys; sys.exit(200)", 200),
    ("import sys; sys.exit('bye')", 1),
    ("raise ValueError('boom')", 1),
], ids=["end", "exit-none", "exit-0", "exit-3", "exit-200", "exit-message", "exception"])
def test_the_exit_code_is_the_programs(tmp_path, body, code):
    write(tmp_path / "prog.py", body)
    r = tmrun(tmp_path, "--quiet", "prog.py")
    assert r.returncode == code, r.stderr


def test_sys_exit_with_a_message_prints_it_on_stderr(tmp_path):
    write(tmp_path / "prog.py", "import sys; sys.exit('goodbye, world')")
    r = tmrun(tmp_path, "--quiet", "prog.py")
    assert r.stderr.strip() == "goodbye, world"


def test_an_exception_in_the_script_shows_its_frames_and_not_tieredmems(tmp_path):
    write(tmp_path / "prog.py", """
        def inner():
            raise ValueError("boom in inner")

        def outer():
            inner()

        outer()
    """)
    r = tmrun(tmp_path, "--quiet", "prog.py")
    assert r.returncode == 1
    err = r.stderr
    assert err.startswith("Traceback (most recent call last):")
    assert "ValueError: boom in inner" in err
    assert "in outer" in err and "in inner" in err and "prog.py" in err
    assert "run.py" not in err and "runpy" not in err and "tieredmem/commands" not in err


def test_an_exception_in_a_dash_m_module_shows_its_frames_and_not_tieredmems(tmp_path):
    write(tmp_path / "lib" / "failing.py", """
        def go():
            raise KeyError("missing")
        go()
    """)
    r = tmrun(tmp_path, "--quiet", "-m", "failing", env={"PYTHONPATH": str(tmp_path / "lib")})
    assert r.returncode == 1
    assert "failing.py" in r.stderr and "in go" in r.stderr and "KeyError: 'missing'" in r.stderr
    assert "run.py" not in r.stderr and "runpy" not in r.stderr


def test_an_uncaught_keyboard_interrupt_ends_the_run_as_it_ends_python(tmp_path):
    write(tmp_path / "prog.py", "raise KeyboardInterrupt")
    direct = python(tmp_path, "prog.py")
    r = tmrun(tmp_path, "--quiet", "prog.py")
    assert direct.returncode == -signal.SIGINT  # python: killed by SIGINT (130 in a shell)
    assert r.returncode == direct.returncode


def test_death_by_a_signal_is_the_programs_as_if_run_directly(tmp_path):
    write(tmp_path / "prog.py", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    direct = python(tmp_path, "prog.py")
    r = tmrun(tmp_path, "--quiet", "prog.py")
    assert direct.returncode == -signal.SIGTERM
    assert r.returncode == direct.returncode


def test_the_program_is_the_process_run_started_so_signals_sent_to_it_reach_the_program(tmp_path):
    # The malloc interposer's re-exec replaces the process; it adds none.
    write(tmp_path / "prog.py", "import os; print(os.getpid())")
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tieredmem", "run", "--quiet", "--nvme-path", str(nvme),
                             *SMALL_POOL, "prog.py"], cwd=tmp_path, env=clean_env(tmp_path),
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0 and int(out) == proc.pid


def test_the_programs_sys_excepthook_reports_its_uncaught_exception(tmp_path):
    write(tmp_path / "prog.py", """
        import sys
        sys.excepthook = lambda t, v, tb: print("HOOK", t.__name__, file=sys.stderr)
        raise ValueError("x")
    """)
    direct = python(tmp_path, "prog.py")
    r = tmrun(tmp_path, "--quiet", "prog.py")
    assert direct.stderr.strip() == "HOOK ValueError"
    assert (r.returncode, r.stderr.strip()) == (1, "HOOK ValueError")


# ---- summary and --stats ---------------------------------------------------

WORKLOAD = textwrap.dedent("""
    import numpy as np
    a = np.ones(32 * 2**20 // 8)   # 32 MiB over an 8 MiB DRAM budget
    assert a.sum() == a.size
""")
SPILLING_POOL = ("--dram", "8MiB", "--nvme", "1GiB")


def test_a_summary_of_tiers_and_faults_goes_to_stderr_at_exit(tmp_path):
    write(tmp_path / "prog.py", WORKLOAD + "print('program output')")
    r = tmrun(tmp_path, "prog.py", sizes=SPILLING_POOL)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "program output\n"
    summary = r.stderr.strip().splitlines()[-1]
    assert summary.startswith("tieredmem:")
    for word in ("dram", "pmem", "nvme", "faults", "promotions", "demotions", "waiting on faults",
                 "resident outside the pool", "malloc:"):
        assert word in summary


def test_quiet_leaves_stderr_to_the_program(tmp_path):
    write(tmp_path / "prog.py", WORKLOAD)
    r = tmrun(tmp_path, "--quiet", "prog.py", sizes=SPILLING_POOL)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_stats_writes_json_with_the_peak_of_each_tier_and_the_faults(tmp_path):
    write(tmp_path / "prog.py", WORKLOAD)
    r = tmrun(tmp_path, "--quiet", "--stats", "stats.json", "prog.py", sizes=SPILLING_POOL)
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["dram"]["peak"] == 8 * MiB
    assert stats["nvme"]["peak"] >= 24 * MiB
    assert stats["pmem"]["peak"] == 0
    assert stats["faults"] > 0
    assert stats["exit_code"] == 0
    assert stats["outside_pool"] > 0
    assert stats["outside_pool"] == stats["rss"] - stats["dram"]["used"] - stats["spare"] - stats["zero_ready"]
    assert set(stats["malloc"]) == {"allocations", "bytes"}  # the interposer is on by default


@pytest.mark.parametrize("policy", ["fifo", "hotness"])
def test_policy_runs_the_program_on_that_policy(tmp_path, policy):
    write(tmp_path / "prog.py", WORKLOAD)
    r = tmrun(tmp_path, "--quiet", "--stats", "stats.json", "--policy", policy, "prog.py", sizes=SPILLING_POOL)
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["settings"]["policy"] == policy
    assert stats["dram"]["peak"] <= stats["dram"]["capacity"]
    assert stats["policy_errors"] == 0


def test_stats_are_written_when_the_program_fails(tmp_path):
    write(tmp_path / "prog.py", "raise SystemExit(5)")
    r = tmrun(tmp_path, "--quiet", "--stats", "stats.json", "prog.py")
    assert r.returncode == 5
    assert json.loads((tmp_path / "stats.json").read_text())["exit_code"] == 5


def test_the_stats_file_is_relative_to_where_run_started_even_if_the_program_changes_directory(tmp_path):
    write(tmp_path / "prog.py", "import os; os.makedirs('elsewhere'); os.chdir('elsewhere')")
    r = tmrun(tmp_path, "--quiet", "--stats", "stats.json", "prog.py")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "stats.json").exists()


def test_stats_include_the_work_of_threads_still_running_when_the_main_script_ends(tmp_path):
    # Python waits for non-daemon threads before it exits; so must the summary.
    write(tmp_path / "prog.py", """
        import threading, time
        import numpy as np

        def work():
            time.sleep(0.5)
            a = np.ones(16 * 2**20 // 8)
            assert a.sum() == a.size

        threading.Thread(target=work).start()
    """)
    r = tmrun(tmp_path, "--quiet", "--stats", "stats.json", "prog.py", sizes=SPILLING_POOL)
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["dram"]["peak"] == 8 * MiB


# ---- settings from environment variables ---------------------------------

@pytest.mark.parametrize("var, value, key, expected", [
    ("TIEREDMEM_DRAM", "32MiB", ("dram", "capacity"), 32 * MiB),
    ("TIEREDMEM_NVME", "512MiB", ("nvme", "capacity"), 512 * MiB),
    ("TIEREDMEM_BLOCK_SIZE", "128KiB", ("block_size",), 128 << 10),
    ("TIEREDMEM_THRESHOLD", "4MiB", ("settings", "threshold"), 4 * MiB),
], ids=["dram", "nvme", "block-size", "threshold"])
def test_an_environment_variable_sets_the_pool(tmp_path, var, value, key, expected):
    write(tmp_path / "prog.py", "pass")
    nvme = tmp_path / "nvme"
    nvme.mkdir()
    env = {"TIEREDMEM_DRAM": "64MiB", "TIEREDMEM_NVME": "1GiB", "TIEREDMEM_NVME_PATH": str(nvme), var: value}
    r = tmrun(tmp_path, "--quiet", "--stats", "stats.json", "prog.py", env=env, sizes=())
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "stats.json").read_text())
    for k in key:
        got = got[k]
    assert got == expected


def test_the_pmem_variables_give_a_pmem_tier_in_the_given_directory(tmp_path):
    pmem_dir = tmp_path / "pmem"
    pmem_dir.mkdir()
    write(tmp_path / "prog.py", WORKLOAD)
    env = {"TIEREDMEM_PMEM": "64MiB", "TIEREDMEM_PMEM_PATH": str(pmem_dir)}
    r = tmrun(tmp_path, "--quiet", "--stats", "stats.json", "prog.py", env=env, sizes=SPILLING_POOL)
    assert r.returncode == 0, r.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["pmem"]["capacity"] == 64 * MiB
    assert stats["pmem"]["peak"] > 0
    assert stats["settings"]["pmem_path"] == str(pmem_dir)


def test_the_threshold_variable_raises_the_size_that_goes_to_the_pool(tmp_path):
    write(tmp_path / "prog.py", PLACEMENT_PROGRAM)
    r = tmrun(tmp_path, "prog.py", env={"TIEREDMEM_THRESHOLD": "4MiB"})
    assert r.returncode == 0, r.stderr
    assert last_json_line(r.stdout)["big_in_pool"] is False


def test_the_nvme_path_variable_places_the_nvme_tier(tmp_path):
    nvme = tmp_path / "from-env"
    nvme.mkdir()
    write(tmp_path / "prog.py", "pass")
    cmd = [sys.executable, "-m", "tieredmem", "run", "--quiet", "--stats", "stats.json", *SMALL_POOL, "prog.py"]
    r = subprocess.run(cmd, cwd=tmp_path, env=clean_env(tmp_path, {"TIEREDMEM_NVME_PATH": str(nvme)}),
                       capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "stats.json").read_text())["settings"]["nvme_path"] == str(nvme)


def test_the_stats_variable_writes_the_stats_file(tmp_path):
    write(tmp_path / "prog.py", "pass")
    r = tmrun(tmp_path, "--quiet", "prog.py", env={"TIEREDMEM_STATS": str(tmp_path / "env-stats.json")})
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "env-stats.json").read_text())["exit_code"] == 0


def test_the_quiet_variable_silences_the_summary(tmp_path):
    write(tmp_path / "prog.py", "pass")
    r = tmrun(tmp_path, "prog.py", env={"TIEREDMEM_QUIET": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_an_option_overrides_its_environment_variable(tmp_path):
    write(tmp_path / "prog.py", "pass")
    r = tmrun(tmp_path, "--quiet", "--stats", "stats.json", "--dram", "48MiB", "prog.py",
              env={"TIEREDMEM_DRAM": "32MiB"}, sizes=("--nvme", "1GiB"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "stats.json").read_text())["dram"]["capacity"] == 48 * MiB


# ---- bad input to run --------------------------------------------------------

@pytest.mark.parametrize("args, env", [
    (["--no-such-option", "prog.py"], None),
    (["--dram", "lots", "prog.py"], None),
    (["--threshold", "-1", "prog.py"], None),
    (["--nvme", "1GiB", "prog.py"], {"TIEREDMEM_DRAM": "1.5 bananas"}),
    (["--block-size", "3000", "prog.py"], None),
    (["--block-size", "0", "prog.py"], None),
    (["no_such_script.py"], None),
    (["-m"], None),
    ([], None),
    (["--pmem", "64MiB", "--pmem-path", "missing-dir", "prog.py"], None),
    (["--policy", "mru", "prog.py"], None),
    (["--pmem-emulation", "optane", "prog.py"], None),
    (["--pmem", "64MiB", "--pmem-emulation", "read_gbps=fast", "prog.py"], None),
    (["--host-dram", "64MiB", "prog.py"], None),
    (["--share", "cli-test", "--host-dram", "64MiB", "prog.py"], None),  # beside SMALL_POOL's --dram
], ids=["unknown-option", "bad-size", "negative-size", "bad-size-in-env", "block-size-not-power-of-two",
        "block-size-zero", "missing-script", "dash-m-without-module", "no-program", "missing-pmem-dir",
        "unknown-policy", "pmem-emulation-without-pmem", "bad-pmem-emulation", "host-dram-without-share",
        "share-with-dram"])
def test_bad_input_to_run_exits_2_with_a_usage_message_without_running_the_program(tmp_path, args, env):
    write(tmp_path / "prog.py", "print('PROGRAM RAN')")
    r = tmrun(tmp_path, *args, env=env, sizes=() if env else SMALL_POOL)
    assert r.returncode == 2, r.stderr
    assert "usage:" in r.stderr
    assert "Traceback" not in r.stderr
    assert "PROGRAM RAN" not in r.stdout


def test_share_runs_the_program_in_the_host_group_named(tmp_path):
    write(tmp_path / "prog.py", """
        import json, tieredmem as tm
        share = tm.installed().stats()["share"]
        print(json.dumps([share["group"], share["budget"], share["floor"], share["weight"]]))
    """)
    group = f"cli-test-{os.getpid()}"
    r = tmrun(tmp_path, "--share", group, "--host-dram", "32MiB", "--share-floor", "4MiB", "--share-weight", "2",
              "prog.py", sizes=("--nvme", "1GiB"))
    assert r.returncode == 0, r.stderr
    assert last_json_line(r.stdout) == [group, 32 * MiB, 4 * MiB, 2.0]


def test_a_missing_nvme_path_exits_2_with_a_usage_message(tmp_path):
    write(tmp_path / "prog.py", "print('PROGRAM RAN')")
    cmd = [sys.executable, "-m", "tieredmem", "run", "--nvme-path", str(tmp_path / "missing"), *SMALL_POOL, "prog.py"]
    r = subprocess.run(cmd, cwd=tmp_path, env=clean_env(tmp_path), capture_output=True, text=True,
                       timeout=RUN_TIMEOUT)
    assert r.returncode == 2, r.stderr
    assert "usage:" in r.stderr
    assert "PROGRAM RAN" not in r.stdout


@pytest.mark.parametrize("dram", ["12", "0", "60KiB"])
def test_a_dram_budget_below_one_block_is_refused_naming_the_value(tmp_path, dram):
    write(tmp_path / "prog.py", "print('PROGRAM RAN')")
    r = tmrun(tmp_path, "prog.py", sizes=("--dram", dram, "--nvme", "1GiB"))
    assert r.returncode == 2, r.stderr
    assert f"--dram: {dram} is less than one 64.0 KiB block" in r.stderr
    assert "PROGRAM RAN" not in r.stdout


def test_a_dram_budget_beyond_the_machines_memory_runs_with_a_warning_naming_it(tmp_path):
    import psutil
    too_much = f"{psutil.virtual_memory().total // MiB * 2}MiB"
    write(tmp_path / "prog.py", "print('PROGRAM RAN')")
    r = tmrun(tmp_path, "prog.py", sizes=("--dram", too_much, "--nvme", "1GiB"))
    assert r.returncode == 0, r.stderr
    assert "PROGRAM RAN" in r.stdout
    assert f"tieredmem: warning: --dram {too_much} is more than" in r.stderr


def test_an_array_beyond_the_pools_capacity_is_said_to_be_the_pools_and_what_to_raise(tmp_path):
    write(tmp_path / "prog.py", "import numpy as np\na = np.ones(2**28)  # 2 GiB\n")
    r = tmrun(tmp_path, "prog.py", sizes=("--dram", "64MiB", "--nvme", "1GiB"))
    assert r.returncode == 1
    assert "Unable to allocate" in r.stderr  # numpy's own error, as without tieredmem
    assert "tieredmem: the pool refused an allocation: cannot allocate 2147483648 bytes" in r.stderr
    assert "--nvme" in r.stderr.splitlines()[-1]
