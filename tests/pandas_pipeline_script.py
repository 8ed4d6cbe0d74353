"""An ordinary pandas job on Arrow-backed strings (pandas 3's default "str" dtype
with pyarrow) and numeric columns: a Parquet write and read, str methods, a
groupby on a string key and a merge with a second frame. It knows nothing of
tieredmem. Prints one line: the row counts and a SHA-256 over the result frames
(values, index and dtypes), so that two runs can be compared exactly.

Usage: pandas_pipeline_script.py DIR [ROWS]   (the Parquet file goes in DIR)
At the default 6.5 M rows its plain peak is ~1.5 GiB (tests/test_pandas_cgroup.py)."""
import hashlib
import sys

import numpy as np
import pandas as pd

DIR = sys.argv[1]
ROWS = int(sys.argv[2]) if len(sys.argv) > 2 else 6_500_000
CHUNK = 1_000_000
KEYS, STORES = 5_000, 1_000  # distinct string keys, distinct integer store ids
WORDS = np.array(["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
                  "india", "juliett", "kilo", "lima", "mike", "november", "oscar", "papa"])


def chunk(start, stop):
    ids = np.arange(start, stop, dtype=np.int64)
    mixed = ids * 2654435761 % 1_000_003
    return pd.DataFrame({
        "id": ids,
        "key": "key-" + pd.Series(mixed % KEYS).astype("str"),
        "name": pd.Series(WORDS[mixed % 16]).astype("str") + "-" + pd.Series(mixed % 101).astype("str")
        + "-" + pd.Series(WORDS[ids % 13]).astype("str"),
        "store": (mixed % STORES).astype(np.int32),
        "x": (mixed % 10_007) / 8.0,
        "qty": (ids % 97).astype(np.int32),
    })


frame = pd.concat([chunk(s, min(s + CHUNK, ROWS)) for s in range(0, ROWS, CHUNK)], ignore_index=True)
assert frame["key"].dtype == "str" and frame["key"].dtype.storage == "pyarrow", frame.dtypes
path = f"{DIR}/frame.parquet"
frame.to_parquet(path)
del frame
df = pd.read_parquet(path)
assert df["name"].dtype == "str" and df["name"].dtype.storage == "pyarrow", df.dtypes

df["upper"] = df["name"].str.upper()
df["name_len"] = df["name"].str.len()
df["has_echo"] = df["upper"].str.contains("ECHO")
df["tail"] = df["name"].str.slice(-4)

# groupby on the string key, then a merge of its result with a small frame on that key
by_key = df.groupby("key").agg(total=("x", "sum"), rows=("id", "count"), qty=("qty", "sum"),
                               longest=("name_len", "max"), echoes=("has_echo", "sum"),
                               last_tail=("tail", "max"))
labels = pd.DataFrame({"key": "key-" + pd.Series(np.arange(KEYS)).astype("str"),
                       "label": pd.Series(WORDS[np.arange(KEYS) % 11]).astype("str").str.title()})
by_key = by_key.reset_index().merge(labels, on="key", how="left")

# the large merge: every row gets its key's region and rate (many to one, on the string key;
# pandas 3.1 makes one Python str per row for it, in pymalloc's arenas: docs/arrow.md)
regions = pd.DataFrame({"key": "key-" + pd.Series(np.arange(KEYS)).astype("str"),
                        "region": pd.Series(WORDS[np.arange(KEYS) % 7]).astype("str") + "-zone",
                        "rate": 1.0 + np.arange(KEYS) % 13 / 100})
joined = df.merge(regions, on="key", how="left")
del df
joined["weighted"] = joined["x"] * joined["qty"] * joined["rate"]
by_region = joined.groupby(["region", "has_echo"]).agg(weighted=("weighted", "sum"), rows=("id", "count"),
                                                        upper_max=("upper", "max"))
top = joined.nlargest(1000, ["weighted", "id"])[["id", "key", "region", "upper", "weighted"]]


def digest(*frames):
    h = hashlib.sha256()
    for f in frames:
        h.update(repr(list(f.dtypes.items())).encode())
        h.update(pd.util.hash_pandas_object(f, index=True).to_numpy().tobytes())
    return h.hexdigest()


print(len(joined), len(by_key), len(by_region), digest(by_key.sort_values("key", ignore_index=True),
                                                        by_region.sort_index(), top.reset_index(drop=True)))
