"""pool.report(): a pool's live arrays, largest first, with shape, dtype,
bytes per tier and, with track_origin, the line that made each; and the
"arrays" that `run --stats FILE` writes."""
import inspect
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tieredmem._engine import ffi, lib
from tieredmem.pool import TIERS

pytestmark = pytest.mark.timeout(60, method="thread")
MiB = 1 << 20


def here() -> str:
    """file:line of the caller's line."""
    frame = inspect.currentframe().f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def test_report_lists_the_live_arrays_largest_first_with_shape_dtype_and_bytes_per_tier(pool):
    p = pool()
    small = p.zeros((256, 1024), dtype=np.float32)  # 1 MiB, never written
    large = p.empty(3 * MiB, dtype=np.int64)  # 24 MiB through 8 MiB of DRAM
    large[:] = 7
    rows = p.report()
    assert [(r["shape"], r["dtype"]) for r in rows] == [((3 * MiB,), "int64"), ((256, 1024), "float32")]
    assert [r["bytes"] for r in rows] == [large.nbytes, small.nbytes]
    assert {t: rows[0][t] for t in TIERS} == p.placement(large)
    assert rows[0]["nvme"] > 0 and rows[1]["unbacked"] == small.nbytes
    del small, large


def test_report_names_the_shape_a_reshaped_array_is_seen_with(pool):
    p = pool()
    grid = p.zeros(2 * MiB // 8).reshape(512, 512)
    (row,) = p.report()
    assert row["shape"] == (512, 512)
    del grid


def test_memory_that_is_no_numpy_array_is_reported_without_shape(pool):
    p = pool()
    raw = lib.tm_alloc(p._p, 2 * MiB)  # as the malloc interposer or pyarrow allocate
    try:
        (row,) = p.report()
        assert (row["shape"], row["dtype"], row["bytes"]) == (None, None, 2 * MiB)
    finally:
        lib.tm_free(p._p, raw)


def test_track_origin_records_the_line_that_made_each_array(pool):
    p = pool(track_origin=True)
    a = p.zeros(2 * MiB); where_a = here()
    b = p.full(MiB, 1.0); where_b = here()
    assert {r["bytes"]: r["origin"] for r in p.report()} == {a.nbytes: where_a, b.nbytes: where_b}
    del a, b


def test_origins_are_not_recorded_unless_asked(pool):
    p = pool()
    a = p.zeros(2 * MiB)
    assert [r["origin"] for r in p.report()] == [None]
    del a


def test_origins_are_recorded_from_the_size_given(pool):
    p = pool(track_origin="4MiB")
    large = p.zeros(4 * MiB // 8); where = here()
    small = p.zeros(4 * MiB // 8 - 1)
    assert [r["origin"] for r in p.report()] == [where, None]
    del large, small


def test_track_origin_refuses_a_size_that_is_not_one(pool):
    with pytest.raises(ValueError, match="track_origin"):
        pool(track_origin="lots")


def test_run_stats_file_lists_the_program_arrays_with_their_origins(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""\
        import numpy as np
        table = np.ones((1024, 1024))
        column = np.arange(3 * 2**20, dtype=np.int32)
        """))
    stats = tmp_path / "stats.json"
    out = subprocess.run([sys.executable, "-m", "tieredmem", "run", "--quiet", "--nvme-path", str(tmp_path), "--dram",
                          "8MiB", "--nvme", "64MiB", "--track-origins", "--stats", str(stats), str(script)],
                         capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    arrays = json.loads(stats.read_text())["arrays"]
    assert [(a["shape"], a["dtype"], a["origin"]) for a in arrays] == [
        ([3 * 2**20], "int32", f"{script}:3"), ([1024, 1024], "float64", f"{script}:2")]
