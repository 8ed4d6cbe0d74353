"""pandas under the drop-in allocator: a pipeline (read_csv, astype, groupby,
sort_values, merge, concat) gives the same frames with
and without it, and the numeric columns it builds live in the pool."""
import numpy as np
import pytest

import tieredmem as tm

pd = pytest.importorskip("pandas")

ROWS = 400_000


@pytest.fixture(scope="module")
def trips_csv(tmp_path_factory):
    rng = np.random.default_rng(7)
    start = np.datetime64("2026-01-01T00:00:00")
    frame = pd.DataFrame({
        "trip_id": np.arange(ROWS),
        "zone": rng.integers(0, 200, ROWS),
        "pickup": start + rng.integers(0, 86400 * 30, ROWS).astype("timedelta64[s]"),
        "minutes": rng.gamma(2.0, 9.0, ROWS).round(2),
        "amount": rng.gamma(3.0, 6.0, ROWS).round(2),
        "passengers": rng.integers(1, 6, ROWS),
    })
    path = tmp_path_factory.mktemp("pandas") / "trips.csv"
    frame.to_csv(path, index=False)
    return path


def pipeline(path):
    trips = pd.read_csv(path, parse_dates=["pickup"])
    trips = trips.astype({"zone": "int32", "passengers": "int16", "amount": "float64"})
    trips["per_minute"] = trips["amount"] / trips["minutes"].clip(lower=0.5)
    zones = trips.groupby("zone").agg(trips=("trip_id", "count"), revenue=("amount", "sum"),
                                      mean_minutes=("minutes", "mean")).reset_index()
    ranked = trips.sort_values(["amount", "trip_id"], ascending=[False, True], ignore_index=True)
    joined = ranked.merge(zones, on="zone", how="left")
    both = pd.concat([trips, trips], ignore_index=True)
    return trips, joined, both


def numeric_bytes_in_pool(pool, frame):
    numeric = frame.select_dtypes(include=["number", "datetime"])
    total = in_pool = 0
    for name in numeric.columns:
        values = numeric[name].to_numpy(copy=False)
        total += values.nbytes
        if pool.owns(values):
            in_pool += values.nbytes
    return in_pool, total


@pytest.fixture
def installed_pool(make_pool):
    pool = make_pool(dram="64MiB", nvme="2GiB", threshold="64KiB")
    tm.install(pool)
    try:
        yield pool
    finally:
        tm.uninstall()


@pytest.mark.timeout(120, method="thread")
def test_pipeline_frames_are_identical_with_and_without_the_allocator(trips_csv, make_pool):
    plain_frames = pipeline(trips_csv)
    pool = make_pool(dram="64MiB", nvme="2GiB", threshold="64KiB")
    tm.install(pool)
    try:
        frames = pipeline(trips_csv)
        for frame, plain in zip(frames, plain_frames):
            pd.testing.assert_frame_equal(frame, plain)
        del frames, frame
    finally:
        tm.uninstall()


@pytest.mark.timeout(120, method="thread")
def test_most_numeric_bytes_of_the_pipeline_live_in_the_pool(trips_csv, installed_pool):
    frames = pipeline(trips_csv)
    for frame in frames:
        in_pool, total = numeric_bytes_in_pool(installed_pool, frame)
        assert in_pool > total / 2, f"only {in_pool} of {total} numeric bytes in the pool"
    del frames, frame


@pytest.mark.timeout(120, method="thread")
def test_pipeline_runs_with_its_data_larger_than_the_dram_budget(trips_csv, make_pool):
    pool = make_pool(dram="8MiB", nvme="2GiB", threshold="64KiB")
    tm.install(pool)
    try:
        trips, joined, both = pipeline(trips_csv)
        assert pool.stats()["demotions"] > 0
        assert joined["revenue"].sum() == pytest.approx(
            trips.groupby("zone")["amount"].sum().reindex(joined["zone"]).sum())
        del trips, joined, both
    finally:
        tm.uninstall()
