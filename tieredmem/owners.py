"""The numpy arrays that own given memory, found among the live objects
(pool.report(): an allocation's shape and dtype)."""
import gc
import sys

import numpy as np


def _data(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def owners(addresses) -> dict:
    """{address: the live numpy array whose data starts there}, for the
    addresses found: the array that owns the memory, or a view of the whole
    of it (a reshape: what the program sees). Arrays are looked for among
    what every object the garbage collector tracks refers to (numpy arrays
    are not tracked themselves) and the local variables of every thread's
    frames; a view leads to the array that owns its memory."""
    wanted = set(addresses)
    found = {}

    def consider(obj):
        seen = obj
        while isinstance(obj, np.ndarray):
            if obj.flags.owndata:
                address = _data(obj)
                if address in wanted and found.get(address, obj) is obj:
                    whole = seen.nbytes == obj.nbytes and _data(seen) == address
                    found[address] = seen if whole else obj
                return
            obj = obj.base

    for container in gc.get_objects():
        for obj in gc.get_referents(container):
            consider(obj)
    for frame in sys._current_frames().values():
        while frame is not None:
            for obj in frame.f_locals.values():
                consider(obj)
            frame = frame.f_back
    return found
