"""An ordinary numpy job over 3 GiB of arrays (three 1 GiB float64 arrays and
their temporaries): scale, transform, standardise, combine. Prints a digest of
the results, so runs can be compared bit for bit. Knows nothing of tieredmem."""
import hashlib

import numpy as np

N = 2**27  # float64 elements: 1 GiB per array
CHUNK = 2**21

x = np.arange(N, dtype=np.float64)
x *= 1e-3
y = np.sqrt(x)
z = x * y
z -= z.mean()
z /= z.std()
y += x

digest = hashlib.sha256()
for array in (x, y, z):
    for i in range(0, N, CHUNK):
        digest.update(array[i:i + CHUNK].tobytes())
print(digest.hexdigest())
