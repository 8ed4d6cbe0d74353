"""A pandas job on Arrow-backed string columns with a Parquet round trip:
~1 GiB of columns (pandas 3 with pyarrow: astype("str") gives Arrow strings).
Prints a digest of what it read back. Usage: arrow_strings_parquet.py DIR"""
import hashlib
import sys

import numpy as np
import pandas as pd

CHUNKS, ROWS = 12, 1_000_000


def chunk(k):
    ids = np.arange(k * ROWS, (k + 1) * ROWS, dtype=np.int64)
    return pd.DataFrame({"id": ids, "a": pd.Series(ids * 7919).astype("str"),
                         "b": pd.Series(ids % 100_003 * 104_729).astype("str"),
                         "c": pd.Series(ids * 31).astype("str")})


frame = pd.concat([chunk(k) for k in range(CHUNKS)], ignore_index=True)
assert frame["a"].dtype.storage == "pyarrow"
path = f"{sys.argv[1]}/frame.parquet"
frame.to_parquet(path)
del frame
back = pd.read_parquet(path)
h = hashlib.sha256()
for col in ("a", "b", "c"):
    lengths = back[col].str.len()
    h.update(f"{col}:{int(lengths.sum())}:{int(back[col].str.endswith('7').sum())}".encode())
h.update(str(int(back["id"].sum())).encode())
print(h.hexdigest())
