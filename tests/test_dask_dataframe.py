"""A dask.dataframe workload whose partitions are larger than a worker's
memory limit: read_parquet of a generated data set, a groupby-agg and a
merge shuffled by key (tieredmem/dask.py, docs/dask.md).

Two single-threaded workers with a 512 MiB limit, partitions of 576 MB
(24 M rows of an int64 key and two float64 columns). pandas' hash tables
(groupby, merge) are the C library's allocations, so the workers run with the
malloc interposer (Interposer) as well as the pool (TieredMemory, 192 MiB of
DRAM: a pandas worker holds ~220 MiB outside its pool, and DRAM + that must
stay below Dask's pause threshold, 80% of the limit). The plain run fails in
seconds; the plugin's takes about 60 s on two shared cores with the plain
recomputation to compare with: it is behind the slow mark."""
import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import Client, KilledWorker, LocalCluster

import tieredmem.dask as tmd

pytestmark = pytest.mark.timeout(600, method="thread")

LIMIT = 512 << 20
ROWS = 24_000_000  # per partition: 24 bytes a row
KEYS = 2_000_000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two Parquet data sets of two files each: a large left and a small right."""
    root = tmp_path_factory.mktemp("parquet")
    rng = np.random.default_rng(0)
    for name, rows in (("left", ROWS), ("right", ROWS // 20)):
        (root / name).mkdir()
        for i in range(2):
            part = pd.DataFrame({"key": rng.integers(0, KEYS, rows), "a": rng.random(rows), "b": rng.random(rows)})
            part.to_parquet(root / name / f"part{i}.parquet")
    assert ROWS * 24 > LIMIT
    return root


def workload(root):
    left, right = dd.read_parquet(root / "left"), dd.read_parquet(root / "right")
    by_key = left.groupby("key").agg({"a": "sum", "b": "max"})
    merged = left.merge(right, on="key", shuffle_method="tasks")
    by_bucket = merged.groupby(merged.key % 100).agg({"a_x": "sum", "b_y": "sum"})
    return by_key, by_bucket


def cluster():
    return LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=LIMIT, dashboard_address=":0")


def test_plain_workers_are_killed_by_partitions_larger_than_their_limit(data):
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        with cluster() as c, Client(c):
            with pytest.raises(KilledWorker):
                dask.compute(*workload(data))


@pytest.mark.slow
def test_plugin_completes_partitions_larger_than_the_limit_with_the_plain_results(data, monkeypatch):
    # The nannies live in this process and put the interposer's variables in
    # its environment before they spawn (Dask's pre-spawn environment): keep
    # them from later tests' subprocesses.
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    with cluster() as c, Client(c) as client:
        client.register_plugin(tmd.Interposer())
        client.register_plugin(tmd.TieredMemory(dram="192MiB"))
        assert all(r["malloc"] for r in client.run(tmd.stats).values())
        by_key, by_bucket = dask.compute(*workload(data))
    plain_by_key, plain_by_bucket = dask.compute(*workload(data), scheduler="sync")
    pd.testing.assert_frame_equal(by_key.sort_index(), plain_by_key.sort_index())
    pd.testing.assert_frame_equal(by_bucket.sort_index(), plain_by_bucket.sort_index())
