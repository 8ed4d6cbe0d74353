"""Byte sizes as users write them: 1048576, "512MiB", "4G", "1.5GiB".

K, M, G, T and KiB, MiB, GiB, TiB are powers of 1024 (as in free, ulimit
and docker); KB, MB, GB, TB are powers of 1000."""
import re
from decimal import Decimal

_UNITS = {
    "": 1, "B": 1,
    "K": 2**10, "KIB": 2**10, "KB": 10**3,
    "M": 2**20, "MIB": 2**20, "MB": 10**6,
    "G": 2**30, "GIB": 2**30, "GB": 10**9,
    "T": 2**40, "TIB": 2**40, "TB": 10**12,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")
MAX_SIZE = 2**64 - 1  # what the engine's uint64 size fields hold


def parse_size(value, name: str) -> int:
    """Bytes in `value`; ValueError naming argument `name` if it is not a
    size or is beyond MAX_SIZE."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a size, got {value!r}")
    n = None
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name}: size must not be negative, got {value}")
        n = value
    elif isinstance(value, str):
        m = _SIZE.match(value)
        unit = m and _UNITS.get(m.group(2).upper())
        if m and unit:
            n = int(Decimal(m.group(1)) * unit)
    if n is None:
        raise ValueError(
            f"{name}: cannot parse size {value!r} (expected bytes as an int or a string "
            f"like '512MiB', '4G', '1.5GiB')"
        )
    if n > MAX_SIZE:
        raise ValueError(f"{name}: {n} bytes is too large (at most 2**64-1)")
    return n


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
