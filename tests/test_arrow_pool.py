"""tm.arrow_pool(pool): a pyarrow.MemoryPool whose allocations of at least the
threshold live in a tieredmem Pool (csrc/arrow/arrow_pool.cc), the smaller
ones in pyarrow's default pool; tm.install(pool) and `tieredmem run` make it
pyarrow's default. Sizes here are multiples of 64 bytes: Arrow rounds a
buffer's capacity up to that, and the pool's figures count what Arrow asks."""
import gc
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

import tieredmem as tm  # noqa: E402

pytestmark = pytest.mark.timeout(120, method="thread")

KiB, MiB = 1 << 10, 1 << 20
THRESHOLD = MiB


def in_pool(pool, buf) -> bool:
    return pool.owns(np.frombuffer(buf, dtype=np.uint8))


def placement(pool, buf) -> dict:
    return pool.placement(np.frombuffer(buf, dtype=np.uint8))


def allocate_and_free(memory_pool, nbytes):
    pa.allocate_buffer(nbytes, memory_pool=memory_pool)


def data_buffers(array):
    """The non-empty buffers of a (chunked) array."""
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    return [b for c in chunks for b in c.buffers() if b is not None and b.size]


@pytest.fixture
def arrow(pool):
    """(tieredmem Pool with 8 MiB of DRAM, its Arrow pool)."""
    p = pool(threshold=THRESHOLD)
    return p, tm.arrow_pool(p)


@pytest.fixture
def restore_default_pool():
    before = pa.default_memory_pool().backend_name
    yield
    tm.uninstall()
    assert pa.default_memory_pool().backend_name == before


def test_arrow_pool_is_a_pyarrow_memory_pool_named_tieredmem(arrow):
    _, ap = arrow
    assert isinstance(ap, pa.MemoryPool)
    assert ap.backend_name == "tieredmem"


def test_arrow_pool_is_one_pool_per_pool_and_threshold(arrow):
    p, ap = arrow
    buf = pa.allocate_buffer(2 * MiB, memory_pool=ap)
    assert tm.arrow_pool(p).bytes_allocated() == 2 * MiB
    other = tm.arrow_pool(p, threshold="4MiB")
    assert other.threshold == 4 * MiB and other.bytes_allocated() == 0
    assert not in_pool(p, pa.allocate_buffer(2 * MiB, memory_pool=other))
    del buf


def test_arrow_pool_keeps_its_tieredmem_pool_alive(nvme_dir):
    ap = tm.arrow_pool(tm.Pool(dram="8MiB", nvme="64MiB", nvme_path=nvme_dir))
    gc.collect()
    buf = pa.allocate_buffer(2 * MiB, memory_pool=ap)
    assert in_pool(ap.tieredmem_pool, buf)
    del buf
    ap.tieredmem_pool.close()


def test_large_allocation_lands_in_the_pool(arrow):
    p, ap = arrow
    before = p.stats()["allocated"]
    buf = pa.allocate_buffer(4 * MiB, memory_pool=ap)
    assert in_pool(p, buf)
    assert p.stats()["allocated"] - before == 4 * MiB


def test_small_allocation_goes_to_the_default_pool(arrow):
    p, ap = arrow
    small = pa.default_memory_pool()  # what the Arrow pool wrapped
    before_pool, before_small = p.stats()["allocated"], small.bytes_allocated()
    buf = pa.allocate_buffer(THRESHOLD - 64, memory_pool=ap)
    assert not in_pool(p, buf)
    assert p.stats()["allocated"] == before_pool
    assert small.bytes_allocated() - before_small == THRESHOLD - 64


def test_bytes_allocated_and_max_memory_are_exact_across_allocate_reallocate_free(arrow):
    _, ap = arrow
    small = pa.allocate_buffer(512 * KiB, memory_pool=ap, resizable=True)
    large = pa.allocate_buffer(3 * MiB, memory_pool=ap, resizable=True)
    assert (ap.bytes_allocated(), ap.max_memory()) == (3584 * KiB, 3584 * KiB)
    small.resize(2 * MiB)  # into the pool
    assert (ap.bytes_allocated(), ap.max_memory()) == (5 * MiB, 5 * MiB)
    large.resize(256 * KiB, shrink_to_fit=True)  # out of the pool
    assert (ap.bytes_allocated(), ap.max_memory()) == (2304 * KiB, 5 * MiB)
    small.resize(1536 * KiB, shrink_to_fit=True)  # within its blocks
    assert ap.bytes_allocated() == 1792 * KiB
    del small, large
    assert (ap.bytes_allocated(), ap.max_memory()) == (0, 5 * MiB)


def test_reallocate_across_the_threshold_moves_the_buffer_both_ways_keeping_its_data(arrow):
    p, ap = arrow
    buf = pa.allocate_buffer(256 * KiB, memory_pool=ap, resizable=True)
    pattern = np.random.default_rng(1).integers(0, 256, 256 * KiB, dtype=np.uint8)
    np.frombuffer(buf, dtype=np.uint8)[:] = pattern
    buf.resize(3 * MiB)
    assert in_pool(p, buf)
    assert np.array_equal(np.frombuffer(buf, dtype=np.uint8)[:256 * KiB], pattern)
    buf.resize(128 * KiB, shrink_to_fit=True)
    assert not in_pool(p, buf)
    assert np.array_equal(np.frombuffer(buf, dtype=np.uint8), pattern[:128 * KiB])


def test_reallocate_within_its_blocks_keeps_the_address(arrow):
    p, ap = arrow
    buf = pa.allocate_buffer(2 * MiB - 64 * KiB + 64, memory_pool=ap, resizable=True)  # 32 blocks of 64 KiB
    address = buf.address
    buf.resize(2 * MiB)
    assert buf.address == address
    buf.resize(3 * MiB)
    assert buf.address != address and in_pool(p, buf)


def test_freed_large_buffer_is_reused_by_the_next_allocation_of_its_size(arrow):
    p, ap = arrow
    buf = pa.allocate_buffer(2 * MiB, memory_pool=ap)
    address = buf.address
    del buf
    assert ap.bytes_allocated() == 0 and p.stats()["allocated"] == 2 * MiB  # kept
    again = pa.allocate_buffer(2 * MiB - 64 * KiB, memory_pool=ap)
    assert again.address == address
    assert p.stats()["allocated"] == 2 * MiB


def test_kept_buffers_stay_within_a_quarter_of_the_dram_budget(arrow):
    p, ap = arrow  # 8 MiB of DRAM: 2 MiB kept at most
    bufs = [pa.allocate_buffer(MiB, memory_pool=ap) for _ in range(4)]
    del bufs
    assert p.stats()["allocated"] == 2 * MiB


def test_kept_buffers_are_given_back_after_a_second_idle(arrow):
    p, ap = arrow
    allocate_and_free(ap, MiB)
    time.sleep(1.1)
    buf = pa.allocate_buffer(2 * MiB, memory_pool=ap)  # does not fit the kept one, which expires
    assert p.stats()["allocated"] == 2 * MiB
    del buf


def test_kept_buffers_are_given_back_on_release_unused(arrow):
    p, ap = arrow
    allocate_and_free(ap, 2 * MiB)
    ap.release_unused()
    assert p.stats()["allocated"] == 0


def test_kept_buffers_give_way_when_the_pool_is_full(pool):
    p = pool(dram="8MiB", nvme=0)
    ap = tm.arrow_pool(p)
    allocate_and_free(ap, 2 * MiB)
    assert in_pool(p, pa.allocate_buffer(7 * MiB, memory_pool=ap))


def test_kept_buffers_do_not_hold_a_closed_pool(pool):
    p = pool()
    allocate_and_free(tm.arrow_pool(p), 2 * MiB)
    p.close()
    assert p._destroyed


def test_allocations_are_at_least_64_byte_aligned(arrow):
    _, ap = arrow
    bufs = [pa.allocate_buffer(n, memory_pool=ap) for n in (1, 100, 4097, 65 * KiB, THRESHOLD + 1, 5 * MiB + 3)]
    assert all(b.address % 64 == 0 for b in bufs)


def test_full_pool_is_an_arrow_memory_error_naming_the_pool(pool):
    p = pool(dram="8MiB", nvme=0)
    with pytest.raises(pa.ArrowMemoryError, match="tieredmem pool: cannot allocate"):
        pa.allocate_buffer(16 * MiB, memory_pool=tm.arrow_pool(p))


def test_arrow_pool_of_a_closed_pool_is_a_value_error(pool):
    p = pool()
    p.close()
    with pytest.raises(ValueError, match="closed"):
        tm.arrow_pool(p)


def test_table_several_times_the_budget_reads_back_equal_after_going_to_nvme(make_pool):
    p = make_pool(dram="16MiB", nvme="512MiB")
    ap = tm.arrow_pool(p)
    n = 2_000_000  # 16 MB per int64 column: 96 MB of columns, 6x the budget
    source = pa.array(np.arange(n, dtype=np.int64))
    table = pa.table({f"c{k}": pc.multiply(source, k + 1, memory_pool=ap) for k in range(6)})
    first = table.column(0).chunk(0).buffers()[1]
    assert in_pool(p, first)
    assert placement(p, first)["nvme"] > 0
    for k in range(6):
        assert np.array_equal(table.column(k).to_numpy(), np.arange(n, dtype=np.int64) * (k + 1))
    assert p.stats()["demotions"] > 0 and p.stats()["promotions"] > 0


def test_closed_pool_keeps_live_arrow_buffers_readable(pool):
    p = pool()
    ap = tm.arrow_pool(p)
    values = pc.multiply(pa.array(np.arange(1_000_000, dtype=np.int64)), 7, memory_pool=ap)
    assert in_pool(p, values.buffers()[1])
    p.close()
    del p
    gc.collect()
    assert np.array_equal(values.to_numpy(), np.arange(1_000_000, dtype=np.int64) * 7)
    del values
    assert ap.bytes_allocated() == 0


def test_after_close_large_allocations_go_to_the_default_pool(pool):
    p = pool()
    ap = tm.arrow_pool(p)
    p.close()
    buf = pa.allocate_buffer(4 * MiB, memory_pool=ap)
    assert tm._engine.lib.tm_pool_of(tm._engine.ffi.cast("void *", buf.address)) == tm._engine.ffi.NULL
    assert ap.bytes_allocated() == 4 * MiB


def test_install_makes_it_pyarrows_default_pool_and_uninstall_restores_the_previous(pool, restore_default_pool):
    p = pool()
    previous = pa.default_memory_pool().backend_name
    tm.install(p)
    assert pa.default_memory_pool().backend_name == "tieredmem"
    buf = pa.allocate_buffer(2 * MiB)
    assert in_pool(p, buf)
    tm.uninstall()
    assert pa.default_memory_pool().backend_name == previous
    assert not in_pool(p, pa.allocate_buffer(2 * MiB))


def test_pandas_arrow_string_column_under_install_lives_in_the_pool_and_is_identical(make_pool,
                                                                                      restore_default_pool):
    pd = pytest.importorskip("pandas")
    numbers = pd.Series(np.arange(500_000) * 37)
    plain = numbers.astype("str")
    tm.install(make_pool(dram="64MiB", nvme="256MiB"))
    p = tm.installed()
    strings = numbers.astype("str")
    assert strings.dtype == plain.dtype and strings.dtype.storage == "pyarrow"
    large = [b for b in data_buffers(pa.array(strings.array)) if b.size >= THRESHOLD]
    assert large and all(in_pool(p, b) for b in large)
    assert strings.equals(plain)


def test_parquet_round_trip_under_install_reads_into_the_pool_and_is_identical(make_pool, tmp_path,
                                                                               restore_default_pool):
    pd = pytest.importorskip("pandas")
    n = 300_000
    frame = pd.DataFrame({"i": np.arange(n), "f": np.linspace(0, 1, n), "s": pd.Series(np.arange(n)).astype("str")})
    tm.install(make_pool(dram="64MiB", nvme="256MiB"))
    p = tm.installed()
    frame.to_parquet(tmp_path / "t.parquet")
    table = pq.read_table(tmp_path / "t.parquet")
    large = [b for col in table.columns for b in data_buffers(col) if b.size >= THRESHOLD]
    assert large and all(in_pool(p, b) for b in large)
    assert table.to_pandas().equals(frame)


def run_code(code, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDMEM_")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path, env=env)


def test_import_tieredmem_and_install_do_not_import_pyarrow_until_the_program_does(tmp_path):
    res = run_code(f"""
        import sys
        import tieredmem as tm
        tm.install(tm.Pool(dram="8MiB", nvme="64MiB", nvme_path={str(tmp_path)!r}))
        assert "pyarrow" not in sys.modules
        import pyarrow as pa
        print(pa.default_memory_pool().backend_name)
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "tieredmem"


def test_without_pyarrow_everything_else_works_and_arrow_pool_names_what_to_install(tmp_path):
    res = run_code(f"""
        import sys
        sys.modules["pyarrow"] = None  # as if it were not installed
        import numpy as np
        import tieredmem as tm
        pool = tm.Pool(dram="8MiB", nvme="64MiB", nvme_path={str(tmp_path)!r})
        tm.install(pool)
        assert pool.owns(np.ones(1 << 20))
        try:
            tm.arrow_pool(pool)
        except ImportError as e:
            print(e)
    """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "pip install pyarrow" in res.stdout
    assert res.stderr == ""


def run_script(tmp_path, text, env=None):
    """stdout of `text` run under `tieredmem run` (64 MiB of DRAM)."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(text))
    (tmp_path / "nvme").mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TIEREDMEM_") and k != "LD_PRELOAD"}
    environ.pop("ARROW_DEFAULT_MEMORY_POOL", None)
    res = subprocess.run([sys.executable, "-m", "tieredmem", "run", "--quiet", "--dram", "64MiB", "--nvme", "1GiB",
                          "--nvme-path", str(tmp_path / "nvme"), str(script)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**environ, **(env or {})})
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_tieredmem_run_makes_pyarrows_default_pool_tieredmem(tmp_path):
    assert run_script(tmp_path, "import pyarrow as pa\nprint(pa.default_memory_pool().backend_name)\n") == "tieredmem"


PARQUET_WRITE = """
    import os, numpy as np, pyarrow as pa, pyarrow.parquet as pq, tieredmem.malloc
    t = pa.table({"x": np.arange(4 << 20, dtype=np.int64), "s": pa.array([str(i % 5000) for i in range(4 << 20)])})
    before = tieredmem.malloc.counts()["bytes"]
    pq.write_table(t, "t.parquet", compression="snappy")
    print(os.environ.get("ARROW_DEFAULT_MEMORY_POOL"), (tieredmem.malloc.counts()["bytes"] - before) >> 20)
"""


def test_under_run_the_parquet_writers_own_buffers_are_pool_memory(tmp_path):
    # Arrow C++ takes them from its default pool, not pyarrow's: the system
    # allocator's under run, whose large mallocs the interposer places.
    allocator, mib = run_script(tmp_path, PARQUET_WRITE).split()
    assert allocator == "system"
    assert int(mib) >= 32, f"only {mib} MiB of the Parquet writer's buffers reached the pool"


def test_under_run_an_arrow_allocator_the_user_chose_is_kept(tmp_path):
    allocator, _ = run_script(tmp_path, PARQUET_WRITE, env={"ARROW_DEFAULT_MEMORY_POOL": "mimalloc"}).split()
    assert allocator == "mimalloc"
