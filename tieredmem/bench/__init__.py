"""The tiering suite behind `tieredmem bench` (issue 5): tieredmem against what
users would do instead (all-DRAM numpy, kernel swap, numpy.memmap), side by
side in one run under the same memory limit.

- workloads.py: the five workloads, sized by footprint, each with a checksum
- systems.py: how each system runs a workload, one fresh process per run
- cgroup.py: a memory cgroup per run (v1 or v2)
- swap.py: the swap file (made, enabled per run, always removed)
- suite.py: the run: interleaving, the machine and its disk, targets
- report.py: results.json, results.md, the plots
- progress.py: the progress bar
"""
