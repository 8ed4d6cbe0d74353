"""A member of a host group, for tests/test_sharing.py.

    share_member.py GROUP HOST_DRAM PERIOD FLOOR ROLE SIZE NVME_DIR

Joins GROUP with a pool, writes an array of SIZE in it, prints one JSON line
(its pid, its pool's published file, and its forked child's pid or null) and
then either goes over the array again and again (ROLE "loop": it faults
while its DRAM holds less than the array) or sleeps (ROLE "idle": it stops
faulting; ROLE "fork": the same, after forking a child that sleeps too), until
killed; or ends there, its array alive (ROLE "exit")."""
import json
import os
import sys
import time

import tieredmem as tm

group, host_dram, period, floor, role, size, nvme = sys.argv[1:8]
pool = tm.Pool(nvme="512MiB", nvme_path=nvme,
               share=tm.Share(group, host_dram=host_dram, floor=floor, period=float(period)))
a = pool.zeros(tm.parse_size(size, "SIZE") // 8)
a += 1
child = os.fork() if role == "fork" else None
if child == 0:
    while True:
        time.sleep(1)
print(json.dumps({"pid": os.getpid(), "published": pool.published_path, "child": child}), flush=True)
while role != "exit":
    if role == "loop":
        a += 1
    else:
        time.sleep(1)
