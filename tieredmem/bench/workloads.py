"""The suite's five workloads, sized by footprint.

Each workload makes its input deterministically (`setup`, with arrays from
the system's `alloc`, so a memmap system puts them in a file), then runs its
computation (`run`, the timed part) and returns a result whose `checksum` is
compared with the all-DRAM run's: every system computes the same thing on the
same data. Checksums are exact (integer digests of the bytes, or sums that
are exact in float64 by construction) except for pca_lstsq, whose BLAS
products may sum in a different order: its eigenvalues and coefficients are
compared with a relative tolerance of 1e-9.

The code is written as a memory-conscious numpy user would write it
(in-place ufuncs where the data is updated, no full-size temporaries that the
computation does not need); the pandas pipeline is written as pandas users
write it, full-size intermediate frames included.
"""
import numpy as np

CHUNK = 1 << 20          # elements per step of generation and digests (8 MiB of float64)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MASK64 = (1 << 64) - 1
ZIPF_S = 1.2             # Zipf exponent of the gather's keys
ZIPF_SCATTER = 2654435761  # prime: rank r is stored at key (r * P) mod n, so hot keys are spread out
PCA_COLS = 32


def _mult(seed):
    return np.uint32(((0x9E3779B1 + 2 * seed * 0x85EBCA6B) | 1) & 0xFFFFFFFF)


def _pattern_into(out, lo, seed, scratch=None):
    """out[:] = values k/1024, k in [0, 1024), from a multiplicative hash of
    the element's index lo, lo+1, ... (32-bit arithmetic; the pattern repeats
    every 2**32 elements). float64 sums of up to 2**40 of them are exact
    whatever the order."""
    n = out.size
    j = np.arange(n, dtype=np.uint32) if scratch is None else scratch[:n]
    if scratch is not None:
        j[:] = np.arange(n, dtype=np.uint32)
    j += np.uint32((lo + seed * 0x7F4A7C15) & 0xFFFFFFFF)
    j *= _mult(seed)
    j >>= np.uint32(22)
    np.multiply(j, 1.0 / 1024, out=out)
    return out


def _pattern(lo, hi, seed):
    return _pattern_into(np.empty(hi - lo), lo, seed)


def fill_pattern(a, seed):
    flat = a.reshape(-1)
    scratch = np.empty(min(CHUNK, flat.size), np.uint32)
    for lo in range(0, flat.size, CHUNK):
        _pattern_into(flat[lo:lo + CHUNK], lo, seed, scratch)


def digest(a):
    """(xor, wrapping sum) of the array's 64-bit words: exact, order-free."""
    v = np.ascontiguousarray(a).reshape(-1).view(np.uint64)
    x = s = 0
    for lo in range(0, v.size, CHUNK):
        part = v[lo:lo + CHUNK]
        x ^= int(np.bitwise_xor.reduce(part))
        s = (s + int(part.sum(dtype=np.uint64))) & MASK64
    return [x, s]


class Workload:
    name = ""
    title = ""
    description = ""
    rtol = 0.0  # 0: checksums must be equal

    def params(self, footprint, budget):
        raise NotImplementedError

    def setup(self, alloc, p):
        raise NotImplementedError

    def run(self, data, p):
        """The timed part: returns (result, {phase: seconds})."""
        raise NotImplementedError

    def checksum(self, result):
        return result

    def same(self, ref, got):
        """Does checksum `got` equal the reference `ref`?"""
        if self.rtol == 0:
            return ref == got
        a = np.asarray(ref, dtype=float)
        b = np.asarray(got, dtype=float)
        return a.shape == b.shape and bool(np.all(np.abs(a - b) <= self.rtol * np.maximum(np.abs(a), 1e-300)))


class SeqReduce(Workload):
    name = "seq_reduce"
    title = "Sequential reduce"
    description = "sum of a float64 array (one sequential read pass)"

    def params(self, footprint, budget):
        return {"n": footprint // 8}

    def setup(self, alloc, p):
        a = alloc((p["n"],), np.float64, "a")
        fill_pattern(a, 1)
        return {"a": a}

    def run(self, data, p):
        return float(data["a"].sum()), {}


class RmwTransform(Workload):
    name = "rmw_transform"
    title = "Read-modify-write transform"
    description = "a = 1.5 * a + 0.25 in place (two read-write passes); digest of the result"

    def params(self, footprint, budget):
        return {"n": footprint // 8}

    def setup(self, alloc, p):
        a = alloc((p["n"],), np.float64, "a")
        fill_pattern(a, 2)
        return {"a": a}

    def run(self, data, p):
        a = data["a"]
        a *= 1.5
        a += 0.25
        return a, {}

    def checksum(self, result):
        return digest(result)


class ZipfGather(Workload):
    name = "zipf_gather"
    title = "Zipf random gather"
    description = (f"table[idx] in batches of 64Ki keys, keys Zipf(s={ZIPF_S}) over the table with the hot keys "
                   "scattered (rank r at key r*P mod n); sum of the gathered values")
    BATCH = 1 << 16

    def params(self, footprint, budget):
        lookups = max(1 << 16, int((1 << 18) * budget / (1 << 30)))  # 256Ki lookups per GiB of DRAM budget
        lookups -= lookups % self.BATCH
        return {"n": (footprint - lookups * 8) // 8, "lookups": lookups}

    def setup(self, alloc, p):
        n = p["n"]
        table = alloc((n,), np.float64, "table")
        fill_pattern(table, 3)
        idx = alloc((p["lookups"],), np.int64, "idx")
        rng = np.random.default_rng(5)
        for lo in range(0, idx.size, CHUNK):
            z = rng.zipf(ZIPF_S, min(CHUNK, idx.size - lo)).astype(np.int64)  # 1, 2, ... (a few overflow: fine)
            z -= 1
            z %= n
            z *= ZIPF_SCATTER % n
            z %= n
            idx[lo:lo + z.size] = z
        return {"table": table, "idx": idx}

    def run(self, data, p):
        table, idx = data["table"], data["idx"]
        total = 0.0
        for lo in range(0, idx.size, self.BATCH):
            total += float(table[idx[lo:lo + self.BATCH]].sum())
        return total, {}


class Pipeline(Workload):
    name = "pipeline"
    title = "pandas preprocessing pipeline"
    description = ("synthetic taxi trips (raw epoch-ms timestamps, zone and payment codes, amounts in cents): "
                   "parse, clean, derive and normalize, groupby-aggregate by zone and hour, sort, join back")
    # Peak memory per input row of the all-DRAM run (measured: the raw columns,
    # the parsed frame, the cleaned frame with its new columns, the sorted
    # copy and the joined result), used to size the input from the footprint.
    BYTES_PER_ROW = 236

    def params(self, footprint, budget):
        return {"rows": max(1000, footprint // self.BYTES_PER_ROW)}

    def setup(self, alloc, p):
        n = p["rows"]
        cols = {"pickup_ms": np.int64, "duration_s": np.int32, "zone": np.int16, "payment": np.int8,
                "fare_cents": np.int64, "tip_cents": np.int32, "distance_m": np.int32}
        raw = {name: alloc((n,), dt, name) for name, dt in cols.items()}
        t0 = 1767225600000  # 2026-01-01 UTC, in ms
        for lo in range(0, n, CHUNK):
            hi = min(lo + CHUNK, n)
            h = [_pattern(lo, hi, seed) for seed in range(10, 16)]  # six independent uniforms in [0, 1)
            raw["pickup_ms"][lo:hi] = t0 + (h[0] * 1024 * 1024 * 2520).astype(np.int64) + np.arange(lo, hi) % 1000
            dur = (h[1] * h[1] * 3600).astype(np.int32) + 60
            dur[(np.arange(lo, hi) % 997) == 0] = -30  # clock errors
            raw["duration_s"][lo:hi] = dur
            raw["zone"][lo:hi] = (h[2] * h[2] * 263).astype(np.int16)  # skewed towards low zone ids
            raw["payment"][lo:hi] = (h[3] * 5).astype(np.int8)  # 0..4
            km = h[4] * h[4] * 30
            fare = (250 + km * 180 + dur / 60 * 40).astype(np.int64)
            fare[(np.arange(lo, hi) % 1009) == 3] *= -1  # refunds / bad rows
            raw["fare_cents"][lo:hi] = fare
            raw["tip_cents"][lo:hi] = (fare * h[5] * 0.3).astype(np.int32)
            dist = (km * 1000).astype(np.int32)
            dist[(np.arange(lo, hi) % 211) == 7] = 0  # GPS dropouts
            raw["distance_m"][lo:hi] = dist
        return raw

    def run(self, data, p):
        import time
        import pandas as pd

        phases = {}
        t = time.perf_counter()

        def lap(name):
            nonlocal t
            now = time.perf_counter()
            phases[name] = now - t
            t = now

        # parse: decode the raw columns
        pickup = pd.to_datetime(data["pickup_ms"], unit="ms")
        df = pd.DataFrame({
            "pickup": pickup,
            "dropoff": pickup + pd.to_timedelta(data["duration_s"], unit="s"),
            "zone": data["zone"],
            "payment": pd.Categorical.from_codes(data["payment"], ["cash", "card", "app", "voucher", "unknown"]),
            "fare": data["fare_cents"] / 100.0,
            "tip": data["tip_cents"] / 100.0,
            "km": data["distance_m"] / 1000.0,
        })
        del pickup
        lap("parse")
        # clean: drop impossible rows
        df = df[(df["km"] > 0) & (df["fare"] > 0) & (df["dropoff"] > df["pickup"])]
        df = df.reset_index(drop=True)
        lap("clean")
        # derive and normalize
        df["minutes"] = (df["dropoff"] - df["pickup"]).dt.total_seconds() / 60.0
        df["hour"] = df["pickup"].dt.hour.astype(np.int8)
        df["speed"] = df["km"] / (df["minutes"] / 60.0)
        for col in ("fare", "tip", "km", "minutes"):
            df[col + "_z"] = (df[col] - df[col].mean()) / df[col].std()
        lap("normalize")
        # groupby-aggregate
        agg = df.groupby(["zone", "hour"], sort=True).agg(
            trips=("fare", "size"), fare_mean=("fare", "mean"), tip_sum=("tip", "sum"),
            km_mean=("km", "mean"), speed_max=("speed", "max")).reset_index()
        lap("groupby")
        # sort
        ranked = df.sort_values("fare_z", ascending=False, kind="stable", ignore_index=True)
        del df
        lap("sort")
        # join the per-zone-hour means back onto every trip
        joined = ranked.merge(agg[["zone", "hour", "fare_mean"]], on=["zone", "hour"], how="left")
        del ranked
        joined["fare_vs_zone"] = joined["fare"] / joined["fare_mean"]
        lap("join")
        return (agg, joined), phases

    def checksum(self, result):
        import pandas as pd
        agg, joined = result
        agg_hash = int(pd.util.hash_pandas_object(agg, index=False).to_numpy().sum(dtype=np.uint64))
        head = joined.head(1000)
        return {
            "rows": len(joined),
            "agg": agg_hash,
            "head": int(pd.util.hash_pandas_object(head, index=False).to_numpy().sum(dtype=np.uint64)),
            "fare_vs_zone": digest(joined["fare_vs_zone"].to_numpy()),
            "fare_z": digest(joined["fare_z"].to_numpy()),
        }


class PcaLstsq(Workload):
    name = "pca_lstsq"
    title = "Standardize + PCA + least squares"
    description = (f"tall n x {PCA_COLS} float64 matrix X and target y: standardize X in place (means, variances), "
                   "covariance X^T X (BLAS), eigendecomposition, normal-equation least squares")
    rtol = 1e-9

    def params(self, footprint, budget):
        return {"n": footprint // ((PCA_COLS + 1) * 8), "d": PCA_COLS}

    def setup(self, alloc, p):
        n, d = p["n"], p["d"]
        X = alloc((n, d), np.float64, "X")
        y = alloc((n,), np.float64, "y")
        w_true = np.linspace(-1.0, 1.0, d)
        rows = max(1, CHUNK // d)
        for lo in range(0, n, rows):
            hi = min(lo + rows, n)
            block = _pattern(lo * d, hi * d, 4).reshape(hi - lo, d)
            block[:, 1:] += 0.5 * block[:, :1]  # correlated columns
            block[:, 2::3] *= 3.0
            X[lo:hi] = block
            acc = _pattern(lo, hi, 5) * 0.1  # noise
            acc += block @ w_true  # (a BLAS order may differ in the last bit: the checksum has a tolerance)
            y[lo:hi] = acc
        return {"X": X, "y": y}

    def run(self, data, p):
        X, y = data["X"], data["y"]
        n = X.shape[0]
        mu = X.mean(axis=0)
        X -= mu
        var = np.einsum("ij,ij->j", X, X) / n
        X /= np.sqrt(var)
        C = (X.T @ X) / n
        evals, _ = np.linalg.eigh(C)
        b = (X.T @ (y - y.mean())) / n
        w = np.linalg.solve(C, b)
        return [float(v) for v in evals[::-1]] + [float(v) for v in w], {}


WORKLOADS = {w.name: w for w in (SeqReduce(), RmwTransform(), ZipfGather(), Pipeline(), PcaLstsq())}
