"""A pandas job on Arrow-backed string columns with a Parquet round trip:
~0.7 GiB of columns (pandas 3 with pyarrow: astype("str") gives Arrow strings).
Checks what it read back against the columns made again, chunk by chunk, and
prints the number of rows checked. Usage: arrow_strings_parquet.py DIR"""
import sys

import numpy as np
import pandas as pd

CHUNKS, ROWS = 8, 1_000_000


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
for k in range(CHUNKS):
    part = back.iloc[k * ROWS:(k + 1) * ROWS].reset_index(drop=True)
    assert part.equals(chunk(k)), f"chunk {k} read back differs"
print(len(back))
